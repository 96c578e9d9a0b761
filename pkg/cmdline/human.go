package cmdline

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Plural returns "1 vehicle", "2 vehicles", "0 vehicles" ("1 key", "3 keys", "2 entries",
// "2 addresses"): for counts in messages meant for people.
func Plural(n int, noun string) string {
	if n == 1 || n == -1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %s", n, pluralOf(noun))
}

func pluralOf(noun string) string {
	switch {
	case noun == "":
		return noun
	case strings.HasSuffix(noun, "s"), strings.HasSuffix(noun, "x"), strings.HasSuffix(noun, "z"),
		strings.HasSuffix(noun, "ch"), strings.HasSuffix(noun, "sh"):
		return noun + "es"
	case strings.HasSuffix(noun, "y") && len(noun) > 1 && !strings.ContainsRune("aeiou", rune(noun[len(noun)-2])):
		return noun[:len(noun)-1] + "ies"
	}
	return noun + "s"
}

// Time formats a time in Unix milliseconds (the protocol's unit) for people, in the local
// zone with its offset: "2026-12-02 08:15:04 UTC+1". Zero, the protocol's "never", is "-".
func Time(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return formatTime(time.UnixMilli(ms).In(time.Local))
}

func formatTime(t time.Time) string {
	_, off := t.Zone()
	zone := "UTC"
	if off != 0 {
		sign := "+"
		if off < 0 {
			sign, off = "-", -off
		}
		zone += sign + fmt.Sprint(off/3600)
		if m := off % 3600 / 60; m != 0 {
			zone += fmt.Sprintf(":%02d", m)
		}
	}
	return t.Format("2006-01-02 15:04:05") + " " + zone
}

// Table writes aligned columns, for the human output of list commands:
//
//	t := cmdline.NewTable(out)
//	t.Row("VIN", "STATUS", "LAST SEEN")
//	t.Row(v.VIN, v.Status, cmdline.Time(v.LastSeenMs))
//	return t.Flush()
type Table struct {
	tw *tabwriter.Writer
}

// NewTable returns a Table writing to w.
func NewTable(w io.Writer) *Table {
	return &Table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
}

// Row adds a row; each cell is formatted with %v, tabs and newlines in it replaced by spaces.
func (t *Table) Row(cells ...any) {
	for i, c := range cells {
		if i > 0 {
			io.WriteString(t.tw, "\t")
		}
		io.WriteString(t.tw, strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(fmt.Sprint(c)))
	}
	io.WriteString(t.tw, "\n")
}

// Flush writes the table out; call it once after the last row.
func (t *Table) Flush() error { return t.tw.Flush() }

// PrintJSON writes v as indented JSON and a newline: the --json output of every command.
func PrintJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
