package resharder

import "testing"

// A start retried with the same request (a forward whose answer was lost)
// finds its own job; a different request does not.
func TestSameSpec(t *testing.T) {
	add := Spec{Add: &NewShard{Name: "s2", Primary: "host=a port=1", Replicas: []string{"host=b port=2"}}, Database: "app"}
	for _, c := range []struct {
		b    Spec
		same bool
	}{
		{Spec{Add: &NewShard{Name: "s2", Primary: "host=a port=1", Replicas: []string{"host=b port=2"}}}, true},
		{Spec{Add: &NewShard{Name: "s2", Primary: "host=a port=1", Replicas: []string{"host=b port=2"}}, Database: "app"}, true},
		{Spec{Add: &NewShard{Name: "s2", Primary: "host=a port=1", Replicas: []string{"host=b port=2"}}, Database: "other"}, false},
		{Spec{Add: &NewShard{Name: "s2", Primary: "host=a port=1"}}, false},
		{Spec{Add: &NewShard{Name: "s3", Primary: "host=a port=1", Replicas: []string{"host=b port=2"}}}, false},
		{Spec{Remove: "s2"}, false},
	} {
		if got := sameSpec(add, c.b); got != c.same {
			t.Errorf("sameSpec(%+v, %+v) = %v", add, c.b, got)
		}
	}
	if !sameSpec(Spec{Remove: "s1", Database: "app"}, Spec{Remove: "s1"}) || sameSpec(Spec{Remove: "s1"}, Spec{Remove: "s2"}) {
		t.Error("remove specs")
	}
}
