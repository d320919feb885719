package merge

import (
	"errors"
	"fmt"

	"github.com/pgshard/pgshard/wire"
)

// Sentinel errors. Every error this package returns is a *wire.Error that
// carries a SQLSTATE and wraps one of these, so callers use errors.Is for
// the kind and the *wire.Error for the client.
var (
	// ErrUnsupported: the spec asks for something this package cannot
	// answer exactly (SQLSTATE 0A000). Returned by New and by Orderable's
	// callers; never discovered halfway through a result, except for text
	// values of date/time types in a DateStyle other than ISO.
	ErrUnsupported = errors.New("not supported across shards")
	// ErrTooManyGroups: a GROUP BY, aggregate or sort needed more rows in
	// memory than Spec.MaxGroups (SQLSTATE 54000, program_limit_exceeded).
	ErrTooManyGroups = errors.New("too many groups to merge")
	// ErrBadInput: a shard sent a value that does not decode as its type,
	// or a row of the wrong width (SQLSTATE XX000, internal_error).
	ErrBadInput = errors.New("malformed row from a shard")
	// ErrOutOfRange: an aggregate or HAVING arithmetic overflowed, as it
	// would in PostgreSQL (SQLSTATE 22003).
	ErrOutOfRange = errors.New("value out of range")
	// ErrDivisionByZero: HAVING divided by zero (SQLSTATE 22012).
	ErrDivisionByZero = errors.New("division by zero")
)

// SQLSTATE codes this package returns.
const (
	CodeFeatureNotSupported     = "0A000"
	CodeProgramLimitExceeded    = "54000"
	CodeInternalError           = "XX000"
	CodeNumericOutOfRange       = "22003"
	CodeDivisionByZero          = "22012"
	CodeInvalidRowCountInLimit  = "2201W"
	CodeInvalidRowCountInOffset = "2201X"
)

func errorf(code string, sentinel error, format string, args ...any) error {
	return &wire.Error{Severity: "ERROR", Code: code, Message: fmt.Sprintf(format, args...), Err: sentinel}
}

func unsupported(format string, args ...any) error {
	return errorf(CodeFeatureNotSupported, ErrUnsupported, format, args...)
}

func badInput(format string, args ...any) error {
	return errorf(CodeInternalError, ErrBadInput, format, args...)
}
