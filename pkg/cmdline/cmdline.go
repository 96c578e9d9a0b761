// Package cmdline holds the habits the three binaries share, on spf13/cobra: a root command
// with --version and shell completion, help on stdout with exit status 0, exit status 2 for a
// usage error, every flag settable from an environment variable shown in its help (NewRoot,
// Execute); a password prompted for without echo, never taken as an argument where ps and
// shell history would see it (ReadPassword); "off" as the one spelling of a disabled address
// (Addr); one configuration loader, defaults then a strict YAML file then the environment then
// flags, whose errors name the key and its line (LoadFile, ApplyEnv); and human output helpers
// (Plural, Time, Table).
package cmdline

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// ErrNoPassword means standard input held no password.
var ErrNoPassword = errors.New("no password on stdin (e.g. `echo 'a long passphrase' | COMMAND`)")

// Interleaved parses fs from args where flags and positional arguments may be mixed
// ("vehicle add VIN --json"), and returns the positional ones in order. Everything after "--"
// is positional, also what starts with "-" (a key id may: "key revoke VIN -- -AbC…").
//
// Deprecated: commands built with NewRoot get this from cobra; kept until every binary moved.
func Interleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// ReadPasswordLine reads the first line of r (at most 4 KiB).
//
// Deprecated: use ReadPassword, which prompts without echo on a terminal; kept until every
// binary moved.
func ReadPasswordLine(r io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	if err != nil {
		return "", fmt.Errorf("read password from stdin: %w", err)
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimRight(pw, "\r")
	if pw == "" {
		return "", ErrNoPassword
	}
	return pw, nil
}
