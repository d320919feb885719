// Command pgshardctl is the admin CLI of pgshard.
//
// Usage:
//
//	pgshardctl <command> [subcommand] [flags]
//
// Commands:
//
//	dev up|down|run                       a local PostgreSQL topology plus pgshard node(s) (see dev.go)
//	cluster status|join|leave             the Raft cluster of pgshard nodes (admin.go)
//	shards list|add|remove|set-endpoints  the shards in the map
//	map show|locate                       the whole map; where a key lives
//	tables list|add|remove                sharded and reference tables
//	verify                                every row on its owning shard, reference tables identical (verify.go)
//	reshard plan|start|status|cancel      online resharding: add or remove a shard (reshard.go)
//
// The admin commands talk to any node's admin API: global flags --admin-url
// (env PGSHARD_ADMIN_URL, default http://127.0.0.1:6480), --token (env
// PGSHARD_ADMIN_TOKEN) and --json, before the command or after the
// subcommand. Exit codes: 0 ok, 1 failed, 2 wrong usage, 3 bad token.
//
// Each command lives in its own file and registers itself in commands.
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
)

// command is one top-level subcommand. run gets the arguments after the
// command name and returns the process exit code.
type command struct {
	summary string
	run     func(args []string) int
}

// commands maps a name to its implementation; other files add entries.
var commands = map[string]command{
	"dev": {summary: "start/stop a local topology and pgshard (up, down, run)", run: runDev},
}

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

func run(args []string, stderr io.Writer) int {
	args, err := parseGlobals(args)
	if err != nil {
		fmt.Fprintf(stderr, "pgshardctl: %v\n", err)
		return 2
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "pgshardctl: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	return c.run(args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: pgshardctl <command> [subcommand] [flags]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nglobal flags: --admin-url URL (env PGSHARD_ADMIN_URL, default "+defaultAdminURL+"), --token T (env PGSHARD_ADMIN_TOKEN), --json")
	fmt.Fprintln(w, "`pgshardctl <command> help` lists a command's subcommands.")
}
