// Package router plans statements without doing any I/O.
//
// Today it holds the session-effects scanner used by the pooler: a small
// lexer that knows PostgreSQL's comments, strings, quoted identifiers and
// dollar quotes, and finds in a query text what a transaction-pooling proxy
// must know before it can hand the backend to someone else: session-level
// SET/RESET (to replay them on the next backend), and features that tie a
// session to one backend (LISTEN, temporary tables, session advisory locks,
// WITH HOLD cursors, SQL-level PREPARE, SET ROLE, ...). The scanner is
// deliberately conservative: when unsure, it pins, because pinning only
// costs pooling efficiency while a wrong guess would run a statement in the
// wrong session state.
package router
