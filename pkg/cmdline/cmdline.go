// Package cmdline holds the habits the commands share: flags may follow positional arguments,
// a password comes on standard input, never as an argument (where ps and shell history would
// see it), and a YAML configuration file is read strictly, with errors that name the key.
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

// ReadPassword reads the first line of r (at most 4 KiB).
func ReadPassword(r io.Reader) (string, error) {
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
