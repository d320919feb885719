package main

// pgshardctl reshard: online resharding through the admin API (package
// resharder runs the job on the Raft leader).
//
//	reshard plan   --add NAME --primary DSN [--replica DSN]... | --remove NAME  [--database DB]
//	reshard start  (same arguments)
//	reshard status [--watch [--interval 1s]] [--json]
//	reshard cancel
//
// plan changes nothing; start starts the job and returns; status --watch
// follows it until it ends (a progress display on a terminal, one line per
// change otherwise, one JSON object per change with --json) and exits 1
// when the job was cancelled or failed.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/resharder"
)

const reshardSpecUsage = "--add NAME --primary DSN [--replica DSN]... | --remove NAME  [--database DB]"

func init() {
	commands["reshard"] = command{summary: "online resharding: plan, start, status, cancel a job", run: group("reshard", map[string]subcommand{
		"plan":   {"plan " + reshardSpecUsage, reshardPlan},
		"start":  {"start " + reshardSpecUsage, reshardStart},
		"status": {"status [--watch [--interval 1s]] [--json]", reshardStatus},
		"cancel": {"cancel", reshardCancel},
	})}
}

// specFlags declares plan's and start's flags; the returned func builds
// the Spec once they are parsed.
func specFlags(fs *flag.FlagSet) func() (resharder.Spec, error) {
	add := fs.String("add", "", "name of the shard to add (a server outside the map, with the tables' schema created by the job)")
	primary := fs.String("primary", "", "with --add: DSN of the new shard's primary, e.g. 'host=10.0.0.7 port=5432' (no user, password or database)")
	var replicas stringList
	fs.Var(&replicas, "replica", "with --add: DSN of a streaming replica of the new shard (repeatable)")
	remove := fs.String("remove", "", "name of the shard to remove (its ranges move to the others)")
	database := fs.String("database", "", "database whose tables move (default: [resharding] database of the nodes' configuration)")
	return func() (resharder.Spec, error) {
		spec := resharder.Spec{Remove: *remove, Database: *database}
		switch {
		case *add != "" && *remove != "":
			return spec, usagef("give --add or --remove, not both (one job adds or removes one shard)")
		case *add == "" && *remove == "":
			return spec, usagef("give --add NAME --primary DSN, or --remove NAME")
		case *add != "" && *primary == "":
			return spec, usagef("--add needs --primary DSN (the new shard's primary)")
		case *add == "" && (*primary != "" || len(replicas) > 0):
			return spec, usagef("--primary and --replica go with --add")
		}
		if *add != "" {
			spec.Add = &resharder.NewShard{Name: *add, Primary: *primary, Replicas: replicas}
		}
		return spec, nil
	}
}

func parseSpec(name string, args []string) (resharder.Spec, *adminFlags, error) {
	fs, a := newFlags(name)
	spec := specFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return resharder.Spec{}, nil, err
	}
	if err := nargs(pos, 0, "only flags"); err != nil {
		return resharder.Spec{}, nil, err
	}
	s, err := spec()
	return s, a, err
}

// describeSpec says what a job does, in words.
func describeSpec(s resharder.Spec) string {
	var b strings.Builder
	if s.Add != nil {
		fmt.Fprintf(&b, "add shard %s (primary %s", s.Add.Name, s.Add.Primary)
		switch n := len(s.Add.Replicas); n {
		case 0:
		case 1:
			b.WriteString(", 1 replica")
		default:
			fmt.Fprintf(&b, ", %d replicas", n)
		}
		b.WriteString(")")
	} else {
		fmt.Fprintf(&b, "remove shard %s", s.Remove)
	}
	if s.Database != "" {
		fmt.Fprintf(&b, " in database %s", s.Database)
	}
	return b.String()
}

// specArgs renders s as pgshardctl arguments (shell-quoted).
func specArgs(s resharder.Spec) string {
	var parts []string
	if s.Add != nil {
		parts = append(parts, "--add", shellQuote(s.Add.Name), "--primary", shellQuote(s.Add.Primary))
		for _, r := range s.Add.Replicas {
			parts = append(parts, "--replica", shellQuote(r))
		}
	} else {
		parts = append(parts, "--remove", shellQuote(s.Remove))
	}
	if s.Database != "" {
		parts = append(parts, "--database", shellQuote(s.Database))
	}
	return strings.Join(parts, " ")
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// reshardTimeout bounds one reshard request: a plan or a start reads the
// shards' databases (on the leader, through the node asked).
const reshardTimeout = 2 * time.Minute

func reshardCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), reshardTimeout)
}

func reshardClient(a *adminFlags) *admin.Client {
	c := a.client()
	c.HTTP = &http.Client{Timeout: reshardTimeout}
	return c
}

// ---- plan

func reshardPlan(args []string) error {
	spec, a, err := parseSpec("reshard plan", args)
	if err != nil {
		return err
	}
	c, cancel := reshardCtx()
	defer cancel()
	p, err := reshardClient(a).ReshardPlan(c, spec)
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(p)
	}
	printPlan(stdout, p)
	fmt.Fprintf(stdout, "\nnothing was changed; start the job with:\n  pgshardctl reshard start %s\n", specArgs(p.Spec))
	return nil
}

func printPlan(w io.Writer, p *resharder.Plan) {
	fmt.Fprintf(w, "plan: %s, against ring version %d\n\n", describeSpec(p.Spec), p.RingVersion)
	var share float64
	for _, m := range p.Moves {
		share += m.Range.Fraction()
	}
	if len(p.Moves) == 0 {
		fmt.Fprintln(w, "no range changes owner")
	} else {
		fmt.Fprintf(w, "ranges that change owner: %d (%.2f%% of the hash space); a key moves when its hash (`pgshardctl map locate KEY`) is in (start, end]\n", len(p.Moves), 100*share)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  START\tEND\tSHARE\tFROM\tTO")
		for _, m := range p.Moves {
			fmt.Fprintf(tw, "  %d\t%d\t%.3f%%\t%s\t%s\n", m.Range.Start, m.Range.End, 100*m.Range.Fraction(), m.From, m.To)
		}
		tw.Flush()
	}
	fmt.Fprintln(w)
	if len(p.Tables) == 0 {
		fmt.Fprintln(w, "no table to move")
	} else {
		fmt.Fprintln(w, "tables (estimated rows and bytes to move):")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  TABLE\tKIND\tFROM\tTO\tROWS\tSIZE")
		var rows, bytes int64
		for _, t := range p.Tables {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", t.Table, t.Kind, t.From, t.To, fmtCount(t.Rows), fmtBytes(t.Bytes))
			rows += t.Rows
			bytes += t.Bytes
		}
		fmt.Fprintf(tw, "  total\t\t\t\t%s\t%s\n", fmtCount(rows), fmtBytes(bytes))
		tw.Flush()
	}
	fmt.Fprintln(w, "\nownership after the job:")
	names := make([]string, 0, len(p.Ownership))
	for n := range p.Ownership {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, n := range names {
		fmt.Fprintf(tw, "  %s\t%.2f%%\n", n, 100*p.Ownership[n])
	}
	tw.Flush()
}

// ---- start, cancel

func reshardStart(args []string) error {
	spec, a, err := parseSpec("reshard start", args)
	if err != nil {
		return err
	}
	c, cancel := reshardCtx()
	defer cancel()
	st, err := reshardClient(a).ReshardStart(c, spec)
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(st)
	}
	fmt.Fprintf(stdout, "reshard job %s started: %s; phase %s\n", st.ID, describeSpec(st.Spec), st.Phase)
	fmt.Fprintln(stdout, "follow it with `pgshardctl reshard status --watch`; `pgshardctl reshard cancel` rolls it back until its cut-over")
	return nil
}

func reshardCancel(args []string) error {
	fs, a := newFlags("reshard cancel")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 0, "no arguments"); err != nil {
		return err
	}
	c, cancel := reshardCtx()
	defer cancel()
	st, err := reshardClient(a).ReshardCancel(c)
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(st)
	}
	if st.Finished {
		fmt.Fprintf(stdout, "reshard job %s had already ended (phase %s)\n", st.ID, st.Phase)
		return nil
	}
	fmt.Fprintf(stdout, "reshard job %s (%s) is being cancelled: phase %s; its changes are rolled back\n", st.ID, describeSpec(st.Spec), st.Phase)
	fmt.Fprintln(stdout, "follow it with `pgshardctl reshard status --watch`")
	return nil
}

// ---- status

// watchRetryFor is how long status --watch keeps trying while the admin
// API cannot answer (an election, the node it asks restarting).
const watchRetryFor = 2 * time.Minute

// watchQuietLine is how often status --watch prints a line off a terminal
// while the job's phase, rows and error stay the same.
const watchQuietLine = 30 * time.Second

func reshardStatus(args []string) error {
	fs, a := newFlags("reshard status")
	watch := fs.Bool("watch", false, "follow the job until it ends (exit 1 when it was cancelled or failed)")
	interval := fs.Duration("interval", time.Second, "with --watch: time between two looks")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := nargs(pos, 0, "no arguments"); err != nil {
		return err
	}
	if *interval <= 0 {
		return usagef("--interval must be positive")
	}
	client := reshardClient(a)
	if !*watch {
		c, cancel := reshardCtx()
		defer cancel()
		st, err := client.ReshardStatus(c)
		if err != nil {
			return err
		}
		if a.json {
			return printJSON(st)
		}
		printStatus(stdout, st, time.Now(), false)
		return nil
	}
	sctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return watchStatus(sctx, client, watchOptions{interval: *interval, json: a.json, terminal: !a.json && isTerminal(stdout)})
}

type watchOptions struct {
	interval time.Duration
	json     bool // one JSON object per change
	terminal bool // redraw a progress display in place
}

// transient reports whether a status request may succeed if repeated.
func transient(err error) bool {
	var ae *admin.APIError
	if errors.As(err, &ae) {
		switch ae.Code {
		case admin.CodeNotLeader, admin.CodeNoLeader, admin.CodeLeadershipLost:
			return true
		}
		return ae.Status >= 500
	}
	return !errors.Is(err, context.Canceled)
}

// watchStatus follows the job until it ends. It fails when the job was
// cancelled or failed, when the job it followed is gone, or when the
// admin API stays unreachable for watchRetryFor.
func watchStatus(ctx context.Context, client *admin.Client, o watchOptions) error {
	var (
		id        string // the job followed
		last      string // the last line or object printed
		printed   time.Time
		failingAt time.Time
	)
	// On a terminal each look redraws the screen from its top left corner
	// (as watch(1) does): right however long lines wrap.
	redraw := func(text string) { fmt.Fprint(stdout, "\x1b[H\x1b[2J"+text) }
	t := time.NewTicker(o.interval)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		st, err := client.ReshardStatus(rctx)
		cancel()
		now := time.Now()
		switch {
		case ctx.Err() != nil:
			fmt.Fprintln(os.Stderr, "stopped watching; the job goes on (`pgshardctl reshard cancel` rolls it back until its cut-over)")
			return nil
		case err != nil && id == "" && !transient(err):
			return err
		case err != nil && !transient(err):
			var ae *admin.APIError
			if errors.As(err, &ae) && ae.Code == admin.CodeNoJob {
				return fmt.Errorf("reshard job %s is no longer reported by the cluster; its outcome is unknown: check `pgshardctl map show` and `pgshardctl verify`", id)
			}
			return err
		case err != nil:
			if failingAt.IsZero() {
				failingAt = now
			}
			if now.Sub(failingAt) > watchRetryFor {
				return fmt.Errorf("no status for %s: %w", watchRetryFor, err)
			}
			msg := fmt.Sprintf("%s status unavailable, retrying: %v\n", now.Format("15:04:05"), err)
			if o.terminal {
				redraw(msg)
			} else if !o.json {
				fmt.Fprint(os.Stderr, msg)
			}
		default:
			failingAt = time.Time{}
			if id == "" {
				id = st.ID
			} else if st.ID != id {
				return fmt.Errorf("reshard job %s is no longer reported (job %s is); its outcome is unknown: check `pgshardctl map show`", id, st.ID)
			}
			switch {
			case o.json:
				b, _ := json.Marshal(st)
				if s := string(b); s != last {
					fmt.Fprintln(stdout, s)
					last = s
				}
			case o.terminal:
				var b strings.Builder
				printStatus(&b, st, now, true)
				redraw(b.String())
			default:
				// A line when the job moves (phase, rows, error), else
				// every watchQuietLine: rates and ETAs alone change
				// every time.
				if k := lineKey(st); k != last || now.Sub(printed) >= watchQuietLine {
					fmt.Fprintf(stdout, "%s %s\n", now.Format("15:04:05"), statusLine(st))
					last, printed = k, now
				}
			}
			if st.Finished {
				return jobEnded(st)
			}
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// jobOutcome classifies a finished job by its phase: ok when it did what
// it was asked, else the words for what happened.
func jobOutcome(st *resharder.Status) (ok bool, what string) {
	switch st.Phase {
	case resharder.PhaseDone:
		return true, "finished"
	case resharder.PhaseCancelled:
		return false, "was cancelled"
	}
	return false, "ended"
}

// jobEnded reports a finished job: nil when it succeeded.
func jobEnded(st *resharder.Status) error {
	ok, what := jobOutcome(st)
	took := st.Updated.Sub(st.Started).Round(time.Second)
	if ok {
		fmt.Fprintf(os.Stderr, "reshard job %s finished in %s (phase %s); check the data with `pgshardctl verify`\n", st.ID, took, st.Phase)
		return nil
	}
	msg := fmt.Sprintf("reshard job %s %s after %s (phase %s)", st.ID, what, took, st.Phase)
	if st.Error != "" {
		msg += "; last error: " + st.Error
	}
	return errors.New(msg)
}

// totals sums the tables' progress.
func totals(st *resharder.Status) (copied, rows int64) {
	for _, t := range st.Tables {
		copied += t.Copied
		rows += t.Rows
	}
	return copied, rows
}

func percent(copied, rows int64) float64 {
	if rows <= 0 {
		return 0
	}
	return math.Min(100, 100*float64(copied)/float64(rows))
}

// lineKey is what makes status --watch print a new line off a terminal.
func lineKey(st *resharder.Status) string {
	copied, _ := totals(st)
	return fmt.Sprintf("%s|%d|%s|%t", st.Phase, copied, st.Error, st.Finished)
}

// statusLine is the job on one line (status --watch off a terminal).
func statusLine(st *resharder.Status) string {
	copied, rows := totals(st)
	s := fmt.Sprintf("job %s phase %s: %s/%s rows copied (%.0f%%), lag %s, %s rows/s, ETA %s",
		st.ID, st.Phase, fmtCount(copied), fmtCount(rows), percent(copied, rows), fmtBytes(st.LagBytes),
		fmtCount(int64(st.RowsPerSec)), fmtETA(st.ETA))
	if st.Waiting != "" && !st.Finished {
		s += "; now: " + st.Waiting
	}
	if st.Cutover > 0 {
		s += "; cut-over pause " + fmtPause(st.Cutover)
	}
	if st.Error != "" {
		s += "; last error: " + st.Error
	}
	return s
}

// fmtPause writes a cut-over pause to the millisecond.
func fmtPause(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}

// printStatus prints the job's status; bars draws progress bars.
func printStatus(w io.Writer, st *resharder.Status, now time.Time, bars bool) {
	fmt.Fprintf(w, "reshard job %s: %s\n", st.ID, describeSpec(st.Spec))
	state := "running"
	if st.Finished {
		_, state = jobOutcome(st)
	}
	fmt.Fprintf(w, "phase   %s (%s)\n", st.Phase, state)
	if !st.Started.IsZero() {
		fmt.Fprintf(w, "started %s (%s ago), updated %s ago\n", st.Started.Local().Format("2006-01-02 15:04:05"),
			now.Sub(st.Started).Round(time.Second), now.Sub(st.Updated).Round(time.Second))
	}
	if len(st.Tables) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  TABLE\tFROM\tTO\tCOPIED\tOF\t\t")
		for _, t := range st.Tables {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%3.0f%%\t%s\n", t.Table, t.From, t.To, fmtCount(t.Copied), fmtCount(t.Rows),
				percent(t.Copied, t.Rows), bar(bars, t.Copied, t.Rows))
		}
		copied, rows := totals(st)
		fmt.Fprintf(tw, "  total\t\t\t%s\t%s\t%3.0f%%\t%s\n", fmtCount(copied), fmtCount(rows), percent(copied, rows), bar(bars, copied, rows))
		tw.Flush()
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "lag %s, %s rows/s, ETA %s\n", fmtBytes(st.LagBytes), fmtCount(int64(st.RowsPerSec)), fmtETA(st.ETA))
	if st.Waiting != "" && !st.Finished {
		fmt.Fprintf(w, "now: %s\n", st.Waiting)
	}
	switch {
	case st.Cutover > 0:
		fmt.Fprintf(w, "cut-over: the moving ranges were frozen for %s (attempt %d)\n", fmtPause(st.Cutover), max(st.CutoverAttempts, 1))
	case st.CutoverAttempts > 0:
		fmt.Fprintf(w, "cut-over: %d attempt(s) so far\n", st.CutoverAttempts)
	}
	if st.Verified != "" {
		fmt.Fprintf(w, "verified: %s\n", st.Verified)
	}
	if st.Error != "" {
		if st.Finished {
			fmt.Fprintf(w, "last error: %s\n", st.Error)
		} else {
			fmt.Fprintf(w, "last error: %s (the job retries; `pgshardctl reshard cancel` rolls it back until its cut-over)\n", st.Error)
		}
	}
}

// bar draws a progress bar, or nothing when off.
func bar(on bool, done, total int64) string {
	if !on {
		return ""
	}
	const width = 24
	n := int(percent(done, total) / 100 * width)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}

// fmtCount writes n with thousands separators.
func fmtCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// fmtBytes writes n bytes in binary units.
func fmtBytes(n int64) string {
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	v := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= 1024
		if v < 1024 || u == "TiB" {
			return fmt.Sprintf("%.1f %s", v, u)
		}
	}
	return ""
}

func fmtETA(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return d.Round(time.Second).String()
}
