package router

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgshard/pgshard/shardmap"
)

// readPlanVectors reads ../testdata/hash_vectors_*.tsv (made by a real
// PostgreSQL; see shardmap/internal/genvectors).
func readPlanVectors(t *testing.T, name string) [][]string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatalf("open vectors: %v", err)
	}
	defer f.Close()
	var rows [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "#") {
			continue
		}
		rows = append(rows, strings.Split(sc.Text(), "\t"))
	}
	if len(rows) == 0 {
		t.Fatalf("no vectors in %s", name)
	}
	return rows
}

// TestPlanHashVectorsInt checks the planner's integer decoding in every
// form against PostgreSQL's hashint8extended.
func TestPlanHashVectorsInt(t *testing.T) {
	for _, row := range readPlanVectors(t, "hash_vectors_int.tsv") {
		v, _ := strconv.ParseInt(row[0], 10, 64)
		want, _ := strconv.ParseInt(row[1], 10, 64)
		forms := map[string]func() (int64, bool){
			"text":  func() (int64, bool) { return hashText(shardmap.KeyInt, row[0]) },
			"bytes": func() (int64, bool) { return hashText(shardmap.KeyInt, []byte(" "+row[0]+" ")) },
			"int8": func() (int64, bool) {
				return hashBinary(shardmap.KeyInt, oidInt8, binary.BigEndian.AppendUint64(nil, uint64(v)))
			},
		}
		if v == int64(int32(v)) {
			forms["int4"] = func() (int64, bool) {
				return hashBinary(shardmap.KeyInt, oidInt4, binary.BigEndian.AppendUint32(nil, uint32(v)))
			}
			forms["int4 untyped"] = func() (int64, bool) {
				return hashBinary(shardmap.KeyInt, 0, binary.BigEndian.AppendUint32(nil, uint32(v)))
			}
		}
		if v == int64(int16(v)) {
			forms["int2"] = func() (int64, bool) {
				return hashBinary(shardmap.KeyInt, oidInt2, binary.BigEndian.AppendUint16(nil, uint16(v)))
			}
		}
		for name, f := range forms {
			if got, ok := f(); !ok || got != want {
				t.Errorf("%s %d: got %d, %v; want %d", name, v, got, ok, want)
			}
		}
	}
}

func TestPlanHashVectorsText(t *testing.T) {
	for _, row := range readPlanVectors(t, "hash_vectors_text.tsv") {
		b, err := hex.DecodeString(row[0])
		if err != nil {
			t.Fatal(err)
		}
		want, _ := strconv.ParseInt(row[1], 10, 64)
		if got, ok := hashText(shardmap.KeyText, string(b)); !ok || got != want {
			t.Errorf("text %q: %d, want %d", b, got, want)
		}
		if got, ok := hashBinary(shardmap.KeyText, oidVarchar, b); !ok || got != want {
			t.Errorf("binary %q: %d, want %d", b, got, want)
		}
		// As a simple-protocol literal, quotes doubled.
		lit := "'" + strings.ReplaceAll(string(b), "'", "''") + "'"
		s, ok := stringLiteral(lit)
		if got, _ := hashText(shardmap.KeyText, s); !ok || got != want {
			t.Errorf("literal %s: %d, want %d", lit, got, want)
		}
	}
}

func TestPlanHashVectorsUUID(t *testing.T) {
	for _, row := range readPlanVectors(t, "hash_vectors_uuid.tsv") {
		want, _ := strconv.ParseInt(row[1], 10, 64)
		u, err := shardmap.ParseUUID(row[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, form := range []string{row[0], strings.ToUpper(row[0]), "{" + row[0] + "}", strings.ReplaceAll(row[0], "-", "")} {
			if got, ok := hashText(shardmap.KeyUUID, form); !ok || got != want {
				t.Errorf("uuid %s: %d, want %d", form, got, want)
			}
		}
		if got, ok := hashBinary(shardmap.KeyUUID, oidUUID, u[:]); !ok || got != want {
			t.Errorf("binary uuid %s: %d, want %d", row[0], got, want)
		}
	}
}

func TestPlanDecodeErrors(t *testing.T) {
	bad := []struct {
		t shardmap.KeyType
		s string
	}{
		{shardmap.KeyInt, "x"}, {shardmap.KeyInt, ""}, {shardmap.KeyInt, "9223372036854775808"},
		{shardmap.KeyInt, "1.5"}, {shardmap.KeyUUID, "1234"}, {shardmap.KeyUUID, "12345678-9abc-def0-1234-56789abcdef0-"},
	}
	for _, b := range bad {
		if _, ok := hashText(b.t, b.s); ok {
			t.Errorf("%v %q decoded", b.t, b.s)
		}
	}
	if h, ok := hashText(shardmap.KeyInt, "-9223372036854775808"); !ok || h != shardmap.HashInt64(-1<<63) {
		t.Error("min int64")
	}
	if _, ok := hashBinary(shardmap.KeyInt, oidInt8, []byte{1, 2, 3}); ok {
		t.Error("3-byte int8 decoded")
	}
	if _, ok := hashBinary(shardmap.KeyInt, oidInt8, []byte{0, 0, 0, 1}); ok {
		t.Error("4-byte value typed int8 decoded")
	}
	if _, ok := hashBinary(shardmap.KeyUUID, oidUUID, make([]byte, 15)); ok {
		t.Error("15-byte uuid decoded")
	}
}

func TestPlanStringLiteral(t *testing.T) {
	for _, c := range []struct{ tok, want string }{
		{`'abc'`, "abc"}, {`'it''s'`, "it's"}, {`E'a\nb'`, "a\nb"}, {`e'it\'s'`, "it's"},
		{`$$x'y$$`, "x'y"}, {`$tag$a$b$tag$`, "a$b"}, {`''`, ""},
	} {
		if got, ok := stringLiteral(c.tok); !ok || got != c.want {
			t.Errorf("%s: %q, %v; want %q", c.tok, got, ok, c.want)
		}
	}
	if _, ok := stringLiteral(`E'\x41'`); ok {
		t.Error(`E'\x41' decoded by the fast path`)
	}
}

func TestPlanParamArrays(t *testing.T) {
	var got []int64
	collect := func(h int64) { got = append(got, h) }
	if !textArray(shardmap.KeyText, `{a,"b c",NULL,"NULL"}`, collect) {
		t.Fatal("text array")
	}
	want := []int64{shardmap.HashText("a"), shardmap.HashText("b c"), shardmap.HashText("NULL")}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("text array: %v, want %v", got, want)
	}
	got = nil
	if !binaryArray(shardmap.KeyInt, binArray(1, 2), collect) || len(got) != 2 || got[1] != shardmap.HashInt64(2) {
		t.Errorf("binary array: %v", got)
	}
	if textArray(shardmap.KeyInt, `{{1,2},{3,4}}`, collect) {
		t.Error("nested array accepted")
	}
}

// TestPlanTemplateReuse: texts of one shape with different keys route to
// their own shards from one cached template, including literals the fast
// path cannot read.
func TestPlanTemplateReuse(t *testing.T) {
	r := testRing(t)
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	parses := 0
	defer func(f func(string) (*pgParseResult, error)) { parse = f }(parse)
	parse = func(s string) (*pgParseResult, error) { parses++; return orig(s) }
	for v := int64(-50); v < 50; v++ {
		sql := "SELECT * FROM users WHERE user_id = " + strconv.FormatInt(v, 10) + " AND name = 'x'"
		if pl := p.Plan(sql, nil, r); pl.Kind != Single || pl.Shard != shardOf(r, v) {
			t.Fatalf("%s: %v %s, want %s", sql, pl.Kind, pl.Shard, shardOf(r, v))
		}
	}
	if parses != 2 { // "-50" and "0" differ in shape (a '-' token); each parses once
		t.Errorf("%d parses for one shape", parses)
	}
	// Strings: plain, doubled quotes, E'' escapes, and an escape the fast
	// path cannot read (parsed, not cached).
	for _, lit := range []string{`'alice'`, `'o''brien'`, `E'tab\there'`, `E'\x41bc'`, `$$bob$$`} {
		want, _ := pgStringValue(lit)
		sql := "SELECT * FROM docs WHERE owner = " + lit
		if pl := p.Plan(sql, nil, r); pl.Kind != Single || pl.Shard != r.Lookup(shardmap.HashText(want)) {
			t.Errorf("%s: %v %s", sql, pl.Kind, pl.Shard)
		}
	}
	// LIMIT values change with the literal too.
	for _, n := range []int64{3, 17} {
		pl := p.Plan("SELECT * FROM users ORDER BY name LIMIT "+strconv.FormatInt(n, 10), nil, r)
		if pl.Kind != Scatter || pl.Limit != n || pl.Offset != -1 {
			t.Errorf("limit %d: %+v", n, pl)
		}
	}
}

// pgStringValue is the value PostgreSQL gives a string literal.
func pgStringValue(lit string) (string, error) {
	tree, err := orig("SELECT " + lit)
	if err != nil {
		return "", err
	}
	return tree.Stmts[0].Stmt.GetSelectStmt().TargetList[0].GetResTarget().Val.GetAConst().GetSval().Sval, nil
}

type pgParseResult = pg_query.ParseResult

var orig = pg_query.Parse
