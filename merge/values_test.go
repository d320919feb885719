package merge

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshard/pgshard/topology/topotest"
)

func connectReal(t *testing.T) *pgconn.PgConn {
	t.Helper()
	topo := topotest.Shared(t)
	db := topotest.NewDatabase(t, topo)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := pgconn.Connect(ctx, topo.Shards[0].Primary.URL("app", "app", db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func randomNumeric(rnd *rand.Rand) string {
	var b strings.Builder
	if rnd.IntN(3) == 0 {
		b.WriteByte('-')
	}
	for i := rnd.IntN(25); i >= 0; i-- {
		b.WriteByte(byte('0' + rnd.IntN(10)))
	}
	if sc := rnd.IntN(30); sc > 0 && rnd.IntN(2) == 0 {
		b.WriteByte('.')
		for ; sc > 0; sc-- {
			b.WriteByte(byte('0' + rnd.IntN(10)))
		}
	}
	return b.String()
}

// TestNumericAgainstPostgres checks numeric text and binary output and
// numeric_div's scale and rounding against a real server.
func TestNumericAgainstPostgres(t *testing.T) {
	c := connectReal(t)
	rnd := rand.New(rand.NewPCG(7, 7))
	var vals []string
	for i := 0; i < 400; i++ {
		a, b := randomNumeric(rnd), randomNumeric(rnd)
		if rnd.IntN(4) == 0 {
			b = fmt.Sprint(1 + rnd.IntN(1000)) // an avg's count
		}
		if strings.Trim(b, "-0.") == "" {
			b = "3"
		}
		vals = append(vals, fmt.Sprintf("('%s'::numeric, '%s'::numeric)", a, b))
	}
	vals = append(vals, "('NaN', 1)", "('Infinity', -3)", "('-Infinity', 2)", "(0.000, 7)", "(1, '1e-30')")
	sql := "SELECT a, b, a / b, a, a / b FROM (VALUES " + strings.Join(vals, ",") + ") v(a, b)"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res := c.ExecParams(ctx, sql, nil, nil, nil, []int16{0, 0, 0, 1, 1}).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	for _, row := range res.Rows {
		a, ok1 := parseNumericText(row[0])
		b, ok2 := parseNumericText(row[1])
		if !ok1 || !ok2 {
			t.Fatalf("parse %q %q", row[0], row[1])
		}
		if got := a.appendBinary(nil); string(got) != string(row[3]) {
			t.Errorf("binary of %s: %x, PostgreSQL %x", row[0], got, row[3])
		}
		if d, ok := parseNumericBinary(row[3]); !ok || string(d.appendText(nil)) != string(row[0]) {
			t.Errorf("binary %x decodes to %s, want %s", row[3], d.appendText(nil), row[0])
		}
		q, err := divDecimal(&a, &b)
		if err != nil {
			t.Fatal(err)
		}
		if got := q.appendText(nil); string(got) != string(row[2]) {
			t.Errorf("%s / %s = %s, PostgreSQL %s", row[0], row[1], got, row[2])
		}
		if got := q.appendBinary(nil); string(got) != string(row[4]) {
			t.Errorf("%s / %s binary %x, PostgreSQL %x", row[0], row[1], got, row[4])
		}
	}
}

// TestFloatTextAgainstPostgres checks float4out/float8out's formatting.
func TestFloatTextAgainstPostgres(t *testing.T) {
	c := connectReal(t)
	rnd := rand.New(rand.NewPCG(8, 8))
	var f8 []float64
	var f4 []float32
	for i := 0; i < 500; i++ {
		switch i % 3 {
		case 0:
			f8 = append(f8, math.Float64frombits(rnd.Uint64()))
		case 1:
			f8 = append(f8, float64(rnd.IntN(1e6))*math.Pow10(rnd.IntN(40)-20))
		default:
			f8 = append(f8, float64(rnd.IntN(2000))/4-250)
		}
		f4 = append(f4, math.Float32frombits(rnd.Uint32()), float32(rnd.IntN(1e6))*float32(math.Pow10(rnd.IntN(20)-10)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, efd := range []int{1, 3, 0, -4} {
		if _, err := c.Exec(ctx, fmt.Sprintf("SET extra_float_digits = %d", efd)).ReadAll(); err != nil {
			t.Fatal(err)
		}
		// The values travel in binary, so no parsing stands between them.
		for i, f := range f8 {
			g := f4[i]
			p8 := appendFloat(nil, f, OIDFloat8, BinaryFormat, efd)
			p4 := appendFloat(nil, float64(g), OIDFloat4, BinaryFormat, efd)
			res := c.ExecParams(ctx, "SELECT $1::float8, $2::float4", [][]byte{p8, p4}, []uint32{OIDFloat8, OIDFloat4},
				[]int16{1, 1}, []int16{0, 0}).Read()
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			row := res.Rows[0]
			if got := appendFloat(nil, f, OIDFloat8, TextFormat, efd); string(got) != string(row[0]) {
				t.Errorf("extra_float_digits %d: float8 %x: got %s, PostgreSQL %s", efd, p8, got, row[0])
			}
			if got := appendFloat(nil, float64(g), OIDFloat4, TextFormat, efd); string(got) != string(row[1]) {
				t.Errorf("extra_float_digits %d: float4 %x: got %s, PostgreSQL %s", efd, p4, got, row[1])
			}
		}
	}
}
