package wire

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATE codes used by pgshard itself. Errors from a backend keep the code
// the backend gave.
const (
	CodeProtocolViolation      = "08P01"
	CodeConnectionFailure      = "08006"
	CodeCannotConnectNow       = "57P03"
	CodeInvalidPassword        = "28P01"
	CodeInvalidAuthorization   = "28000"
	CodeFeatureNotSupported    = "0A000"
	CodeTooManyConnections     = "53300"
	CodeAdminShutdown          = "57P01"
	CodeQueryCanceled          = "57014"
	CodeInternalError          = "XX000"
	CodeDuplicatePreparedStmt  = "42P05"
	CodeInvalidSQLStatementNam = "26000"
	CodeInvalidParameterValue  = "22023"
	CodeUndefinedObject        = "42704"
	CodeSyntaxError            = "42601"
	CodeProgramLimitExceeded   = "54000"
	CodeIdleSessionTimeout     = "57P05"
	CodeInFailedSQLTransaction = "25P02"
	CodeNoActiveSQLTransaction = "25P01"
)

// Error is an error that carries a SQLSTATE. It becomes an ErrorResponse
// only at the wire boundary (see ErrorResponse).
type Error struct {
	Severity string // ERROR when empty; FATAL when the connection closes after it
	Code     string
	Message  string
	Detail   string
	Hint     string
	Err      error // the cause, if any
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s (SQLSTATE %s): %v", e.Message, e.Code, e.Err)
	}
	return fmt.Sprintf("%s (SQLSTATE %s)", e.Message, e.Code)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with severity ERROR.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Severity: "ERROR", Code: code, Message: fmt.Sprintf(format, args...)}
}

// Fatalf returns an *Error with severity FATAL: the connection ends after it.
func Fatalf(code, format string, args ...any) *Error {
	return &Error{Severity: "FATAL", Code: code, Message: fmt.Sprintf(format, args...)}
}

// ProtocolError reports bytes that do not follow the protocol. The
// connection is closed after it.
type ProtocolError struct {
	Msg       string
	Oversized bool
}

func (e *ProtocolError) Error() string { return "protocol violation: " + e.Msg }

// ErrorResponse turns any error into the message a client receives:
// an *Error keeps its fields, a backend's *pgconn.PgError is passed on as it
// is, a *ProtocolError becomes 08P01 (54000 when oversized), and anything else
// becomes XX000 with the error's text.
func ErrorResponse(err error) *pgproto3.ErrorResponse {
	var we *Error
	if errors.As(err, &we) {
		sev := we.Severity
		if sev == "" {
			sev = "ERROR"
		}
		msg := we.Message
		if we.Err != nil {
			msg = msg + ": " + we.Err.Error()
		}
		return &pgproto3.ErrorResponse{Severity: sev, SeverityUnlocalized: sev, Code: we.Code, Message: msg, Detail: we.Detail, Hint: we.Hint}
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return &pgproto3.ErrorResponse{
			Severity: pe.Severity, SeverityUnlocalized: pe.SeverityUnlocalized, Code: pe.Code, Message: pe.Message,
			Detail: pe.Detail, Hint: pe.Hint, Position: pe.Position, InternalPosition: pe.InternalPosition,
			InternalQuery: pe.InternalQuery, Where: pe.Where, SchemaName: pe.SchemaName, TableName: pe.TableName,
			ColumnName: pe.ColumnName, DataTypeName: pe.DataTypeName, ConstraintName: pe.ConstraintName,
			File: pe.File, Line: pe.Line, Routine: pe.Routine,
		}
	}
	var pre *ProtocolError
	if errors.As(err, &pre) {
		code := CodeProtocolViolation
		if pre.Oversized {
			code = CodeProgramLimitExceeded
		}
		return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: pre.Error()}
	}
	return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: CodeInternalError, Message: err.Error()}
}

// AppendError appends the ErrorResponse for err to buf.
func AppendError(buf []byte, err error) []byte {
	out, encErr := ErrorResponse(err).Encode(buf)
	if encErr != nil {
		return buf
	}
	return out
}
