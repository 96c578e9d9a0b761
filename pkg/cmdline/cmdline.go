// Package cmdline holds the habits the three binaries share, on spf13/cobra: a root command
// with --version and shell completion, help on stdout with exit status 0, exit status 2 for a
// usage error, every flag settable from an environment variable shown in its help (NewRoot,
// Execute); a password prompted for without echo, never taken as an argument where ps and
// shell history would see it (ReadPassword); "off" as the one spelling of a disabled address
// (Addr); one configuration loader, defaults then a strict YAML file then the environment then
// flags, whose errors name the key and its line (LoadFile, ApplyEnv); and human output helpers
// (Plural, Time, Table).
package cmdline

import "errors"

// ErrNoPassword means standard input held no password.
var ErrNoPassword = errors.New("no password on stdin (e.g. `echo 'a long passphrase' | COMMAND`)")
