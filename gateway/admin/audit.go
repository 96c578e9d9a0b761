package admin

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"telematics/pkg/api"
	"telematics/pkg/cmdline"
)

func auditCommand(o *options) *cobra.Command {
	var (
		f            api.AuditQuery
		since, until string
		output       string
		asCSV        bool
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "The audit log, newest first: a table, --json, or --csv for a spreadsheet",
		Long: `The audit log, newest first, filtered by car, user, kind and time. A table with local times
by default; --json for scripts (one JSON object per line); --csv (--output csv) for a spreadsheet, with times in RFC 3339
UTC. --since and --until take an RFC 3339 time (2026-12-01T08:00:00Z), a date (2026-12-01,
local midnight) or a duration before now (24h, 90m); since is included, until is not.`,
		Example: `  gateway admin audit --user alice --limit 5
  gateway admin audit --vin 1HGCM82633A004352 --since 24h
  gateway admin audit --kind login --since 2026-12-01 --until 2026-12-02 --csv > logins.csv`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("takes no arguments (got %q): filter with --user NAME, --vin VIN or --kind KIND", args[0])
			}
			// Checked here, before the token is read: a usage error, whatever the token.
			now := time.Now()
			var err error
			if f.SinceMs, err = parseWhen("--since", since, now); err != nil {
				return err
			}
			f.UntilMs, err = parseWhen("--until", until, now)
			return err
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.VIN, "vin", "", "only this car")
	fs.StringVar(&f.User, "user", "", "only this user")
	fs.StringVar(&f.Kind, "kind", "", "only this kind ("+strings.Join(api.AuditKinds, ", ")+")")
	fs.IntVar(&f.Limit, "limit", 50, "the newest N records")
	fs.StringVar(&since, "since", "", "records at or after this `time` (RFC 3339, a date, or a duration before now: 24h)")
	fs.StringVar(&until, "until", "", "records before this `time` (as --since)")
	fs.StringVar(&output, "output", "table", "table, json or csv")
	fs.BoolVar(&asCSV, "csv", false, "the same as --output csv")
	cmd.RunE = o.do(func(ctx context.Context, c *api.Client, cmd *cobra.Command, _ []string) error {
		switch {
		case asCSV:
			output = "csv"
		case o.json:
			output = "json"
		}
		if output != "table" && output != "json" && output != "csv" {
			return cmdline.UsageError("--output %q: want table, json or csv", output)
		}
		q := f
		q.VIN = vin(f.VIN)
		evs, err := c.Audit(ctx, q)
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		switch output {
		case "json":
			return writeJSONLines(w, evs)
		case "csv":
			return writeCSV(w, evs)
		}
		if len(evs) == 0 {
			fmt.Fprintln(cmd.ErrOrStderr(), "no audit records match")
			return nil
		}
		t := cmdline.NewTable(w)
		t.Row("TIME", "KIND", "USER", "VIN", "ACTION", "OUTCOME", "REASON", "DETAIL")
		for _, e := range evs {
			t.Row(cmdline.Time(e.TsMs), e.Kind, dash(e.User), dash(e.VIN), dash(e.Action), dash(e.Outcome), dash(e.Reason), dash(e.Detail))
		}
		if err := t.Flush(); err != nil {
			return err
		}
		if len(evs) == f.Limit {
			fmt.Fprintf(cmd.ErrOrStderr(), "the newest %s; --limit N for more\n", cmdline.Plural(len(evs), "record"))
		}
		return nil
	})
	return cmd
}

// writeJSONLines writes one compact JSON object per record (JSON Lines: grep and jq -c friendly).
func writeJSONLines(w io.Writer, evs []api.AuditEvent) error {
	enc := json.NewEncoder(w)
	for _, e := range evs {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return nil
}

// writeCSV writes records with a header row, times in RFC 3339 UTC with milliseconds.
func writeCSV(w io.Writer, evs []api.AuditEvent) error {
	cw := csv.NewWriter(w)
	// Columns are only ever added at the end, so spreadsheets and scripts keep working.
	cw.Write([]string{"seq", "time", "kind", "user", "client_id", "vin", "cmd_id", "action", "outcome", "reason", "detail",
		"received", "sent", "car_time"})
	for _, e := range evs {
		cw.Write([]string{strconv.FormatUint(e.Seq, 10), time.UnixMilli(e.TsMs).UTC().Format("2006-01-02T15:04:05.000Z07:00"),
			e.Kind, e.User, e.ClientID, e.VIN, e.CmdID, e.Action, e.Outcome, e.Reason, e.Detail,
			csvTime(e.ReceivedMs), csvTime(e.SentMs), csvTime(e.CarMs)})
	}
	cw.Flush()
	return cw.Error()
}

// csvTime is ms in RFC 3339 UTC with milliseconds; "" for 0 (a time the record does not have).
func csvTime(ms int64) string {
	if ms == 0 {
		return ""
	}
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// parseWhen reads --since/--until: RFC 3339, a date (local midnight) or a duration before now.
// "" is 0, no bound.
func parseWhen(flag, s string, now time.Time) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UnixMilli(), nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.Local); err == nil {
		return t.UnixMilli(), nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d).UnixMilli(), nil
	}
	return 0, cmdline.UsageError("%s %q: want an RFC 3339 time (2026-12-01T08:00:00Z), a date (2026-12-01) or a duration before now (24h)", flag, s)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
