package wire

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"

	"github.com/jackc/pgx/v5/pgproto3"
)

// WriteReady ends a successful startup: it writes a ParameterStatus for each
// of params (in name order), BackendKeyData with key, and ReadyForQuery
// (idle), all in one write.
func WriteReady(w io.Writer, params map[string]string, key CancelKey) error {
	names := make([]string, 0, len(params))
	for name := range params {
		names = append(names, name)
	}
	sort.Strings(names)

	var buf []byte
	var err error
	for _, name := range names {
		buf, err = (&pgproto3.ParameterStatus{Name: name, Value: params[name]}).Encode(buf)
		if err != nil {
			return fmt.Errorf("wire: write ready: %w", err)
		}
	}
	secret := binary.BigEndian.AppendUint32(nil, key.SecretKey)
	buf, err = (&pgproto3.BackendKeyData{ProcessID: key.ProcessID, SecretKey: secret}).Encode(buf)
	if err != nil {
		return fmt.Errorf("wire: write ready: %w", err)
	}
	buf, err = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(buf)
	if err != nil {
		return fmt.Errorf("wire: write ready: %w", err)
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("wire: write ready: %w", err)
	}
	return nil
}
