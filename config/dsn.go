package config

import (
	"net/url"
	"strings"
)

// WithLogin completes a shard server's connection string (a libpq URL or
// keyword/value string without user, password or database, as in
// [[shards]]) with a login and a database, keeping its other settings
// (sslmode and the like). An empty password is left out. The result is a
// libpq connection string, valid for pgx and for a subscription's
// CONNECTION.
func WithLogin(dsn, user, password, db string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if u, err := url.Parse(dsn); err == nil {
			switch {
			case password != "":
				u.User = url.UserPassword(user, password)
			case user != "":
				u.User = url.User(user)
			}
			u.Path = "/" + db
			return u.String()
		}
	}
	s := strings.TrimSpace(dsn)
	if user != "" {
		s += " user=" + quoteConnValue(user)
	}
	if password != "" {
		s += " password=" + quoteConnValue(password)
	}
	return s + " dbname=" + quoteConnValue(db)
}

// quoteConnValue quotes a keyword/value connection string value.
func quoteConnValue(v string) string {
	out := []byte{'\''}
	for i := 0; i < len(v); i++ {
		if v[i] == '\'' || v[i] == '\\' {
			out = append(out, '\\')
		}
		out = append(out, v[i])
	}
	return string(append(out, '\''))
}
