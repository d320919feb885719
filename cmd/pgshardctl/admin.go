package main

// Commands that talk to a pgshard node's admin API (package admin):
//
//	cluster status|join|leave
//	shards  list|add|remove|set-endpoints
//	map     show|locate
//	tables  list|add|remove
//
// Global flags, accepted before the command or after the subcommand:
// --admin-url (env PGSHARD_ADMIN_URL, default http://127.0.0.1:6480),
// --token (env PGSHARD_ADMIN_TOKEN), --json (print the API's JSON answer).

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/shardmap"
)

// defaultAdminURL is the admin address of a node started with defaults.
const defaultAdminURL = "http://127.0.0.1:6480"

// globals holds the global flags given before the command name.
var globals = struct {
	adminURL, token string
	json            bool
	set             map[string]bool
}{set: map[string]bool{}}

// stdout is where commands print (tests replace it).
var stdout io.Writer = os.Stdout

// parseGlobals consumes leading --admin-url/--token/--json and returns the rest.
func parseGlobals(args []string) ([]string, error) {
	for len(args) > 0 && strings.HasPrefix(args[0], "-") && args[0] != "-h" && args[0] != "--help" {
		name, val, hasVal := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
		switch name {
		case "json":
			globals.json = !hasVal || val == "true"
			globals.set["json"] = true
			args = args[1:]
			continue
		case "admin-url", "token":
		default:
			return nil, fmt.Errorf("unknown global flag %s (global flags: --admin-url, --token, --json)", args[0])
		}
		if !hasVal {
			if len(args) < 2 {
				return nil, fmt.Errorf("flag %s needs a value", args[0])
			}
			val = args[1]
			args = args[1:]
		}
		args = args[1:]
		if name == "admin-url" {
			globals.adminURL = val
		} else {
			globals.token = val
		}
		globals.set[name] = true
	}
	return args, nil
}

// adminFlags are the global flags on a subcommand's flag set.
type adminFlags struct {
	url, token string
	json       bool
}

func newFlags(name string) (*flag.FlagSet, *adminFlags) {
	fs := flag.NewFlagSet("pgshardctl "+name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	a := &adminFlags{}
	url := os.Getenv("PGSHARD_ADMIN_URL")
	if url == "" {
		url = defaultAdminURL
	}
	if globals.set["admin-url"] {
		url = globals.adminURL
	}
	token := os.Getenv("PGSHARD_ADMIN_TOKEN")
	if globals.set["token"] {
		token = globals.token
	}
	fs.StringVar(&a.url, "admin-url", url, "admin API of any pgshard node (env PGSHARD_ADMIN_URL)")
	fs.StringVar(&a.token, "token", token, "admin token (env PGSHARD_ADMIN_TOKEN)")
	fs.BoolVar(&a.json, "json", globals.json, "print the API's JSON answer")
	return fs, a
}

// parseArgs parses flags anywhere among the arguments and returns the
// positional ones. A negative number (a key such as -1) is positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if isNegNumber(args[0]) {
			pos = append(pos, args[0])
			args = args[1:]
			continue
		}
		j := slices.IndexFunc(args, isNegNumber)
		if j < 0 {
			j = len(args)
		}
		if err := fs.Parse(args[:j]); err != nil {
			return nil, err
		}
		rest := fs.Args()
		switch {
		case len(rest) == 0:
			args = args[j:]
		case rest[0] == "--":
			return append(append(pos, rest[1:]...), args[j:]...), nil
		default:
			pos = append(pos, rest[0])
			args = append(slices.Clone(rest[1:]), args[j:]...)
		}
	}
	return pos, nil
}

func isNegNumber(s string) bool {
	return len(s) > 1 && s[0] == '-' && s[1] >= '0' && s[1] <= '9'
}

// usageError is a wrong invocation (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

type subcommand struct {
	usage string
	run   func(args []string) error
}

// group runs one of a command's subcommands and turns errors into exit codes.
func group(name string, subs map[string]subcommand) func(args []string) int {
	return func(args []string) int {
		if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			fmt.Fprintf(os.Stderr, "usage:\n")
			for _, k := range slices.Sorted(maps.Keys(subs)) {
				fmt.Fprintf(os.Stderr, "  pgshardctl %s %s\n", name, subs[k].usage)
			}
			fmt.Fprintln(os.Stderr, "\nglobal flags: --admin-url URL (env PGSHARD_ADMIN_URL), --token T (env PGSHARD_ADMIN_TOKEN), --json")
			if len(args) == 0 {
				return 2
			}
			return 0
		}
		sub, ok := subs[args[0]]
		if !ok {
			fmt.Fprintf(os.Stderr, "pgshardctl %s: unknown subcommand %q; run `pgshardctl %s help`\n", name, args[0], name)
			return 2
		}
		err := sub.run(args[1:])
		var ue usageError
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, &ue):
			fmt.Fprintf(os.Stderr, "pgshardctl %s %s: %v\nusage: pgshardctl %s %s\n", name, args[0], err, name, sub.usage)
			return 2
		default:
			fmt.Fprintf(os.Stderr, "pgshardctl %s %s: %v\n", name, args[0], err)
			var ae *admin.APIError
			if errors.As(err, &ae) && ae.Code == admin.CodeUnauthorized {
				return 3
			}
			return 1
		}
	}
}

func init() {
	commands["cluster"] = command{summary: "Raft cluster: status, join, leave", run: group("cluster", map[string]subcommand{
		"status": {"status", clusterStatus},
		"join":   {"join NODE_ID RAFT_ADDR [--nonvoter] [--node-admin-url URL]", clusterJoin},
		"leave":  {"leave NODE_ID", clusterLeave},
	})}
	commands["shards"] = command{summary: "shards: list, add, remove, set-endpoints", run: group("shards", map[string]subcommand{
		"list":          {"list", shardsList},
		"add":           {"add NAME --primary DSN [--replica DSN]... [--place] [--vnodes N]", shardsAdd},
		"remove":        {"remove NAME", shardsRemove},
		"set-endpoints": {"set-endpoints NAME --primary DSN [--replica DSN]...", shardsSetEndpoints},
	})}
	commands["map"] = command{summary: "the shard map: show, locate a key", run: group("map", map[string]subcommand{
		"show":   {"show [--json]", mapShow},
		"locate": {"locate KEY [--type int|text|uuid]", mapLocate},
	})}
	commands["tables"] = command{summary: "sharded and reference tables: list, add, remove", run: group("tables", map[string]subcommand{
		"list":   {"list", tablesList},
		"add":    {"add NAME [--reference] [--key-column user_id] [--key-type int|text|uuid]", tablesAdd},
		"remove": {"remove NAME", tablesRemove},
	})}
}

func (a *adminFlags) client() *admin.Client { return admin.NewClient(a.url, a.token) }

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 60*time.Second)
}

func printJSON(v any) error {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func nargs(pos []string, n int, what string) error {
	if len(pos) != n {
		return usagef("want %s, got %d argument(s)", what, len(pos))
	}
	return nil
}

// ---- cluster

func clusterStatus(args []string) error {
	fs, a := newFlags("cluster status")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 0, "no arguments"); err != nil {
		return err
	}
	c, cancel := ctx()
	defer cancel()
	st, err := a.client().Status(c)
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(st)
	}
	w := stdout
	fmt.Fprintf(w, "node     %s", st.NodeID)
	if st.RaftAddr != "" {
		fmt.Fprintf(w, " (raft %s)", st.RaftAddr)
	}
	fmt.Fprintf(w, "  %s\n", st.Stats["state"])
	switch {
	case st.LeaderID == "" && len(st.Servers) == 0:
		fmt.Fprintln(w, "leader   none: this node runs without a cluster ([cluster] data_dir not set)")
	case st.LeaderID == "":
		fmt.Fprintln(w, "leader   none known (an election may be in progress, or a majority of voters is down)")
	default:
		fmt.Fprintf(w, "leader   %s (raft %s", st.LeaderID, st.LeaderAddr)
		if st.LeaderAdminURL != "" {
			fmt.Fprintf(w, ", admin %s", st.LeaderAdminURL)
		}
		fmt.Fprintln(w, ")")
	}
	fmt.Fprintf(w, "map      version %d, ring version %d\n", st.MapVersion, st.RingVersion)
	if s := st.Stats; s["term"] != "" {
		fmt.Fprintf(w, "raft     term %s, last log index %s, commit index %s, applied index %s, last contact %s\n",
			s["term"], s["last_log_index"], s["commit_index"], s["applied_index"], s["last_contact"])
	}
	if len(st.Servers) > 0 {
		fmt.Fprintln(w, "\nservers:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  ID\tSUFFRAGE\tRAFT ADDRESS\tADMIN URL\t")
		for _, s := range st.Servers {
			mark := ""
			if s.Leader {
				mark = "leader"
			}
			adm := s.AdminURL
			if adm == "" {
				adm = "-"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", s.ID, s.Suffrage, s.Addr, adm, mark)
		}
		tw.Flush()
	}
	return nil
}

func clusterJoin(args []string) error {
	fs, a := newFlags("cluster join")
	nonvoter := fs.Bool("nonvoter", false, "join as a non-voter (receives the log, does not vote)")
	nodeURL := fs.String("node-admin-url", "", "the joining node's own admin URL (so others can forward to it)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 2, "NODE_ID RAFT_ADDR"); err != nil {
		return err
	}
	req := admin.JoinRequest{ID: pos[0], Addr: pos[1], Suffrage: "voter", AdminURL: *nodeURL}
	if *nonvoter {
		req.Suffrage = "nonvoter"
	}
	c, cancel := ctx()
	defer cancel()
	r, err := a.client().Join(c, req)
	return report(a, r, err)
}

func clusterLeave(args []string) error {
	fs, a := newFlags("cluster leave")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 1, "NODE_ID"); err != nil {
		return err
	}
	c, cancel := ctx()
	defer cancel()
	r, err := a.client().Leave(c, pos[0])
	return report(a, r, err)
}

// report prints a write's result.
func report(a *adminFlags, r *admin.WriteResult, err error) error {
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(r)
	}
	fmt.Fprintf(stdout, "%s (map version %d)\n", r.Message, r.MapVersion)
	return nil
}

// ---- shards

func shardsList(args []string) error {
	fs, a := newFlags("shards list")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 0, "no arguments"); err != nil {
		return err
	}
	c, cancel := ctx()
	defer cancel()
	l, err := a.client().Shards(c)
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(l)
	}
	printShards(l.Shards)
	fmt.Fprintf(stdout, "(map version %d)\n", l.MapVersion)
	return nil
}

func printShards(shards []admin.ShardInfo) {
	if len(shards) == 0 {
		fmt.Fprintln(stdout, "no shards; add one with `pgshardctl shards add NAME --primary DSN`")
		return
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tOWNS\tTOKENS\tPRIMARY\tREPLICAS")
	for _, s := range shards {
		reps := strings.Join(s.Replicas, "; ")
		if reps == "" {
			reps = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f%%\t%d\t%s\t%s\n", s.Name, s.State, 100*s.Ownership, s.Tokens, s.Primary, reps)
	}
	tw.Flush()
}

func shardsAdd(args []string) error {
	fs, a := newFlags("shards add")
	primary := fs.String("primary", "", "DSN of the shard's primary, e.g. 'host=10.0.0.5 port=5432' (required)")
	var replicas stringList
	fs.Var(&replicas, "replica", "DSN of a streaming replica (repeatable)")
	place := fs.Bool("place", false, "place the shard on the ring now (takes 1/(N+1) of the hash space; moves no data: only for shards without data)")
	vnodes := fs.Int("vnodes", 0, fmt.Sprintf("tokens of the shard on the ring with --place (default %d)", shardmap.DefaultVnodes))
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 1, "NAME"); err != nil {
		return err
	}
	if *primary == "" {
		return usagef("--primary DSN is required")
	}
	c, cancel := ctx()
	defer cancel()
	r, err := a.client().AddShard(c, admin.AddShardRequest{Name: pos[0], Primary: *primary, Replicas: replicas, Place: *place, Vnodes: *vnodes})
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(r)
	}
	fmt.Fprintf(stdout, "%s (map version %d)\n", r.Message, r.MapVersion)
	return nil
}

func shardsRemove(args []string) error {
	fs, a := newFlags("shards remove")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 1, "NAME"); err != nil {
		return err
	}
	c, cancel := ctx()
	defer cancel()
	r, err := a.client().RemoveShard(c, pos[0])
	return report(a, r, err)
}

func shardsSetEndpoints(args []string) error {
	fs, a := newFlags("shards set-endpoints")
	primary := fs.String("primary", "", "DSN of the primary (required)")
	var replicas stringList
	fs.Var(&replicas, "replica", "DSN of a streaming replica (repeatable; none given = no replicas)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 1, "NAME"); err != nil {
		return err
	}
	if *primary == "" {
		return usagef("--primary DSN is required")
	}
	c, cancel := ctx()
	defer cancel()
	r, err := a.client().SetEndpoints(c, pos[0], admin.EndpointsRequest{Primary: *primary, Replicas: replicas})
	return report(a, r, err)
}

// ---- map

func mapShow(args []string) error {
	fs, a := newFlags("map show")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 0, "no arguments"); err != nil {
		return err
	}
	c, cancel := ctx()
	defer cancel()
	v, m, err := a.client().Map(c)
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(v)
	}
	w := stdout
	fmt.Fprintf(w, "map version %d, ring version %d (as node %s holds it)\n\n", m.Version(), m.RingVersion(), v.NodeID)
	var infos []admin.ShardInfo
	for _, sh := range m.Shards() {
		si := admin.ShardInfo{Shard: sh, Ownership: v.Ownership[sh.Name]}
		if r := m.Ring(); r != nil {
			si.Tokens = len(r.Ranges(sh.Name))
		}
		infos = append(infos, si)
	}
	printShards(infos)
	fmt.Fprintln(w)
	if ts := m.Tables(); len(ts) > 0 {
		printTables(ts)
		fmt.Fprintln(w)
	} else {
		fmt.Fprint(w, "no tables defined\n\n")
	}
	r := m.Ring()
	if r == nil {
		fmt.Fprintln(w, "ring: empty (no shard placed yet)")
		return nil
	}
	fmt.Fprintf(w, "ring: %d tokens; a key belongs to the range (start, end] holding hashint8extended(key, 0)\n", r.Len())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "START\tEND\tSHARE\t SHARD\t")
	tokens := r.Tokens()
	for i, t := range tokens {
		prev := tokens[(i+len(tokens)-1)%len(tokens)].Pos
		g := shardmap.Range{Start: prev, End: t.Pos}
		fmt.Fprintf(tw, "%d\t%d\t%.3f%%\t %s\t\n", g.Start, g.End, 100*g.Fraction(), t.Shard)
	}
	tw.Flush()
	if jobs := m.Jobs(); len(jobs) > 0 {
		fmt.Fprintf(w, "\nreshard jobs:\n")
		for _, j := range jobs {
			fmt.Fprintf(w, "  %s  %s  phase %s (updated at version %d)\n", j.ID, j.Kind, j.Phase, j.Updated)
		}
	}
	return nil
}

func mapLocate(args []string) error {
	fs, a := newFlags("map locate")
	typ := fs.String("type", "int", "type of the key: int (smallint, integer, bigint), text or uuid")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 1, "KEY"); err != nil {
		return err
	}
	c, cancel := ctx()
	defer cancel()
	l, err := a.client().Locate(c, pos[0], *typ)
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(l)
	}
	fn := map[string]string{"bigint": "hashint8extended", "text": "hashtextextended", "uuid": "uuid_hash_extended"}[l.Type]
	lit := l.Key
	if l.Type != "bigint" {
		lit = "'" + strings.ReplaceAll(l.Key, "'", "''") + "'"
	}
	w := stdout
	fmt.Fprintf(w, "key    %s (%s)\n", l.Key, l.Type)
	fmt.Fprintf(w, "hash   %d   (= SELECT %s(%s, 0))\n", l.Hash, fn, lit)
	fmt.Fprintf(w, "range  (%d, %d]", l.RangeStart, l.RangeEnd)
	if l.Wraps {
		fmt.Fprint(w, "  (wraps around)")
	}
	fmt.Fprintf(w, "\nshard  %s\n", l.Shard)
	fmt.Fprintf(w, "map    version %d\n", l.MapVersion)
	return nil
}

// ---- tables

func tablesList(args []string) error {
	fs, a := newFlags("tables list")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 0, "no arguments"); err != nil {
		return err
	}
	c, cancel := ctx()
	defer cancel()
	l, err := a.client().Tables(c)
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(l)
	}
	if len(l.Tables) == 0 {
		fmt.Fprintln(stdout, "no tables defined; add one with `pgshardctl tables add NAME`")
	} else {
		printTables(l.Tables)
	}
	fmt.Fprintf(stdout, "(map version %d)\n", l.MapVersion)
	return nil
}

func printTables(ts []shardmap.Table) {
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TABLE\tKIND\tKEY COLUMN\tKEY TYPE")
	for _, t := range ts {
		col, typ := t.KeyColumn, ""
		if t.Kind == shardmap.TableSharded {
			typ = t.KeyType.String()
		} else {
			col, typ = "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, t.Kind, col, typ)
	}
	tw.Flush()
}

func tablesAdd(args []string) error {
	fs, a := newFlags("tables add")
	ref := fs.Bool("reference", false, "a reference table: every shard holds a full copy")
	col := fs.String("key-column", "", "shard key column of a sharded table (default "+shardmap.DefaultKeyColumn+")")
	typ := fs.String("key-type", "", "type of the shard key: int, text or uuid (default int)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 1, "NAME"); err != nil {
		return err
	}
	req := admin.AddTableRequest{Name: pos[0], Kind: string(shardmap.TableSharded), KeyColumn: *col, KeyType: *typ}
	if *ref {
		if *col != "" || *typ != "" {
			return usagef("a reference table has no shard key: drop --key-column/--key-type")
		}
		req.Kind = string(shardmap.TableReference)
	}
	c, cancel := ctx()
	defer cancel()
	r, err := a.client().AddTable(c, req)
	return report(a, r, err)
}

func tablesRemove(args []string) error {
	fs, a := newFlags("tables remove")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 1, "NAME"); err != nil {
		return err
	}
	c, cancel := ctx()
	defer cancel()
	r, err := a.client().RemoveTable(c, pos[0])
	return report(a, r, err)
}
