package config

import "testing"

func TestWithLogin(t *testing.T) {
	for _, c := range []struct{ dsn, user, password, db, want string }{
		{"host=h port=1", "app", "p'w", "db", `host=h port=1 user='app' password='p\'w' dbname='db'`},
		{" host=h ", "postgres", "", "app", `host=h user='postgres' dbname='app'`},
		{"postgres://h:1/x?sslmode=disable", "app", "pw", "db", "postgres://app:pw@h:1/db?sslmode=disable"},
		{"postgresql://h:1", "postgres", "", "app", "postgresql://postgres@h:1/app"},
	} {
		if got := WithLogin(c.dsn, c.user, c.password, c.db); got != c.want {
			t.Errorf("WithLogin(%q, %q, %q, %q) = %q, want %q", c.dsn, c.user, c.password, c.db, got, c.want)
		}
	}
}
