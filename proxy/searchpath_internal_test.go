package proxy

import (
	"slices"
	"testing"
)

func TestParseSearchPath(t *testing.T) {
	for v, want := range map[string][]string{
		`"$user", public`:          {"app", "public"},
		`s2,public`:                {"s2", "public"},
		` S2 , "My Schema", pg_x `: {"s2", "My Schema", "pg_x"},
		`'s2', 'Public'`:           {"s2", "Public"},
		`'"Q", x'`:                 {`"Q", x`},
		`""""`:                     {`"`},
		``:                         nil,
	} {
		if got := parseSearchPath(v, "app"); !slices.Equal(got, want) {
			t.Errorf("%q: %q, want %q", v, got, want)
		}
	}
}
