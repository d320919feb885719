package router

import (
	"slices"
	"testing"
)

func TestFreeDatabases(t *testing.T) {
	cases := []struct {
		sql  string
		want []string
	}{
		{"DROP DATABASE a", []string{"a"}},
		{"drop database if exists \"Test_A\"", []string{"Test_A"}},
		{"DROP DATABASE Test_A", []string{"test_a"}},
		{"DROP DATABASE a WITH (FORCE)", []string{"a"}},
		{"DROP DATABASE a (FORCE);", []string{"a"}},
		{"/* pgshard:primary */ DROP DATABASE a", []string{"a"}},
		{"CREATE DATABASE b TEMPLATE a", []string{"a"}},
		{"CREATE DATABASE b WITH OWNER app TEMPLATE = 'a' ENCODING 'UTF8'", []string{"a"}},
		{"CREATE DATABASE b TEMPLATE \"My DB\"", []string{"My DB"}},
		{"CREATE DATABASE b", []string{"template1"}},
		{"CREATE DATABASE b TEMPLATE DEFAULT", []string{"template1"}},
		{"CREATE DATABASE b TEMPLATE template0", []string{"template0"}},
		{"ALTER DATABASE a RENAME TO b", []string{"a"}},
		{"ALTER DATABASE a SET TABLESPACE pg_default", []string{"a"}},
		{"DROP DATABASE a; DROP DATABASE b; DROP DATABASE a", []string{"a", "b"}},
		{"SELECT 1; CREATE DATABASE c TEMPLATE x", []string{"x"}},
		// Nothing to free.
		{"ALTER DATABASE a SET work_mem = '1MB'", nil},
		{"ALTER DATABASE a OWNER TO app", nil},
		{"ALTER DATABASE a WITH CONNECTION LIMIT 5", nil},
		{"ALTER TABLE a RENAME TO b", nil},
		{"SELECT 'DROP DATABASE a'", nil},
		{"DROP TABLE a", nil},
		{"DROP DATABASE", nil}, // does not parse: the backend says so
		{"", nil},
	}
	for _, c := range cases {
		if got := FreeDatabases(c.sql); !slices.Equal(got, c.want) {
			t.Errorf("FreeDatabases(%q) = %q, want %q", c.sql, got, c.want)
		}
	}
}

// MentionsDatabase is the cheap test in front of the parser: it must be
// true for every statement FreeDatabases can name, and false for the
// everyday ones.
func TestMentionsDatabase(t *testing.T) {
	for _, sql := range []string{
		"DROP DATABASE a", "drop Database a", "CREATE DATABASE b TEMPLATE a",
		"ALTER DATABASE a RENAME TO b", "SELECT 1; DROP DATABASE a",
		"/* pgshard:primary */ drop database a", "-- c\nALTER DATABASE\ta SET TABLESPACE t",
		"DROP DATABASE\"a\"", "database",
	} {
		if !MentionsDatabase(sql) {
			t.Errorf("MentionsDatabase(%q) = false", sql)
		}
	}
	for _, sql := range []string{
		"SELECT 1", "SELECT datname FROM pg_database", "SELECT databases FROM t", "DROP TABLE x",
		"UPDATE t SET database2 = 1", "", "datab",
	} {
		if MentionsDatabase(sql) {
			t.Errorf("MentionsDatabase(%q) = true", sql)
		}
	}
}
