package topology

import (
	"os"
	"syscall"
)

// OSUser is the OS user that PostgreSQL and its companions (pgbouncer, which
// refuses root too) run as: the postgres user when this process is root,
// else the current user. Other programs that start such servers (the
// benchmark) use it rather than look the user up again.
// A nil *OSUser is the current user.
type OSUser struct{ r *runAs }

func (u *OSUser) runAs() *runAs {
	if u == nil {
		return nil
	}
	return u.r
}

// PostgresOSUser returns the OSUser for this process.
func PostgresOSUser() (*OSUser, error) {
	r, err := lookupRunAs()
	if err != nil {
		return nil, err
	}
	return &OSUser{r: r}, nil
}

// SysProcAttr starts a child in its own process group as the user.
func (u *OSUser) SysProcAttr() *syscall.SysProcAttr { return u.runAs().sysProcAttr(false) }

// Chown gives path to the user (a no-op when not root).
func (u *OSUser) Chown(path string) error { return u.runAs().chown(path) }

// WriteFile writes a file owned by the user.
func (u *OSUser) WriteFile(path string, data []byte, mode os.FileMode) error {
	return u.runAs().writeFile(path, data, mode)
}
