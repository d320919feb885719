package wire

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// cancelWaitTimeout bounds how long SendCancel waits for the server to close
// the connection when ctx has no deadline.
const cancelWaitTimeout = 5 * time.Second

// SendCancel asks the server at addr (host:port, TCP) to cancel the query
// running on the backend identified by processID and secretKey (the
// BackendKeyData it sent; pgconn.HijackedConn.SecretKey). Like libpq, it
// writes a CancelRequest and waits for the server to close the connection,
// which it does once it has handled the request; it gives up waiting at
// ctx's deadline (or after 5s) without error, since the request was sent.
// As in PostgreSQL, the server reports nothing: success means delivered,
// not that a query was cancelled.
func SendCancel(ctx context.Context, addr string, processID uint32, secretKey []byte) error {
	req := &pgproto3.CancelRequest{ProcessID: processID, SecretKey: secretKey}
	buf, err := req.Encode(nil)
	if err != nil {
		return fmt.Errorf("wire: send cancel: %w", err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("wire: send cancel: %w", err)
	}
	defer conn.Close()

	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(cancelWaitTimeout)
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	if _, err := conn.Write(buf); err != nil {
		return fmt.Errorf("wire: send cancel to %s: %w", addr, err)
	}
	// Wait for the server to close; its answer, if any, is ignored.
	_, _ = io.Copy(io.Discard, conn)
	return nil
}
