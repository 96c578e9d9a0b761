package cmdline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Version is the release the binaries report with --version. A release build sets it with
// -ldflags "-X telematics/pkg/cmdline.Version=v1.2.3"; otherwise the module version from the
// build information is used ("(devel)" for a build from a work tree).
var Version = ""

// Annotation keys this package sets on commands and flags.
const (
	annotEnvPrefix = "cmdline_env_prefix" // on the root: the prefix of every variable
	annotEnv       = "cmdline_env"        // on a flag: its variables, first one shown in help
	annotNoEnv     = "cmdline_no_env"     // on a flag: no variable (NoEnv)
	annotPrepared  = "cmdline_prepared"   // on a command: Execute has wrapped it
)

// NewRoot returns the root command of a binary: --version prints "NAME VERSION (go1.x,
// commit)", `completion bash|zsh|fish|powershell` writes a shell completion script, help goes
// to stdout and exits 0, and errors are left to Execute, which prints them once (usage is not
// repeated after every error). envPrefix ("GATEWAY") names the environment variables that
// Execute binds to the flags.
func NewRoot(name, short, envPrefix string) *cobra.Command {
	root := &cobra.Command{
		Use:           name,
		Short:         short,
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Annotations:   map[string]string{annotEnvPrefix: strings.TrimSuffix(strings.ToUpper(envPrefix), "_")},
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		if strings.HasPrefix(err.Error(), "unknown shorthand flag") {
			// Key ids are base64url and may start with "-": say how to pass one.
			err = fmt.Errorf("%w (an argument that starts with -, such as a key id, goes after --: %s ARGS -- -ARG)", err, c.CommandPath())
		}
		return usageError{err}
	})
	return root
}

// versionString is "VERSION (go1.x, COMMIT)" from the build information.
func versionString() string {
	v, goVersion, commit := Version, "go?", "unknown commit"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if v == "" {
			v = bi.Main.Version
		}
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != "" {
			commit = "commit " + rev[:min(12, len(rev))]
			if modified == "true" {
				commit += "+modified"
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	return fmt.Sprintf("%s (%s, %s)", v, goVersion, commit)
}

// usageError is an error in how the command was called: exit status 2, with a pointer to help.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// UsageError returns an error that Execute reports as a usage error (exit status 2, followed by
// "see 'NAME CMD --help'"). Argument validators (cobra.ExactArgs & co.), unknown commands and
// flag errors are usage errors too.
func UsageError(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// IsUsageError reports whether err, or an error it wraps, is a usage error.
func IsUsageError(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

// exitError carries the exit status a command chose.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e exitError) Unwrap() error { return e.err }

// WithExitCode makes Execute return code for err. With a nil err nothing is printed: for a
// command that already told the user what happened (a failed check in a drill, say).
func WithExitCode(code int, err error) error { return exitError{code: code, err: err} }

// SetEnv names the environment variables of the flag name of cmd instead of the derived
// PREFIX_FLAG_NAME: the first one is shown in help, all are consulted in order (an old name
// kept working, say). It panics when cmd has no such flag, a programming error.
func SetEnv(cmd *cobra.Command, name string, vars ...string) {
	f := lookupOwnFlag(cmd, name)
	if f.Annotations == nil {
		f.Annotations = map[string][]string{}
	}
	f.Annotations[annotEnv] = vars
}

// NoEnv keeps the flag name of cmd from being set by the environment.
func NoEnv(cmd *cobra.Command, name string) {
	f := lookupOwnFlag(cmd, name)
	if f.Annotations == nil {
		f.Annotations = map[string][]string{}
	}
	f.Annotations[annotNoEnv] = []string{"true"}
}

func lookupOwnFlag(cmd *cobra.Command, name string) *pflag.Flag {
	f := cmd.Flags().Lookup(name)
	if f == nil {
		f = cmd.PersistentFlags().Lookup(name)
	}
	if f == nil {
		panic(fmt.Sprintf("cmdline: %s has no flag --%s", cmd.CommandPath(), name))
	}
	return f
}

// PrefixEnv names the variable of every flag of cmd and its subcommands PREFIX_FLAG_NAME
// instead of the root's prefix, for a command whose flags mean something of their own (the
// admin's --json or --user are not the server's): the flags named in none, and any flag
// already given a variable or none (SetEnv, NoEnv), keep what they have.
func PrefixEnv(cmd *cobra.Command, prefix string, none ...string) {
	prefix = strings.TrimSuffix(prefix, "_")
	each := func(f *pflag.Flag) {
		switch {
		case f.Name == "help", f.Annotations[annotEnv] != nil, f.Annotations[annotNoEnv] != nil:
		case slices.Contains(none, f.Name):
			NoEnv(cmd, f.Name)
		default:
			SetEnv(cmd, f.Name, EnvName(prefix, f.Name))
		}
	}
	cmd.LocalNonPersistentFlags().VisitAll(each)
	cmd.PersistentFlags().VisitAll(each)
	for _, c := range cmd.Commands() {
		PrefixEnv(c, prefix, none...)
	}
}

// EnvName is the variable of a flag: PREFIX_FLAG_NAME, upper case, dashes to underscores.
func EnvName(prefix, flagName string) string {
	return strings.ToUpper(prefix + "_" + strings.ReplaceAll(flagName, "-", "_"))
}

// Execute runs root with args (not including the program name) and returns the exit status: 0
// on success and for help, 2 for a usage error (unknown command or flag, wrong arguments, a bad
// value: the error and "see 'NAME CMD --help'" on stderr), 1 for any other error ("NAME CMD:
// message" on stderr), or the code given to WithExitCode. Every flag of every command gets the
// environment variable PREFIX_FLAG_NAME (shown in its help as [$PREFIX_FLAG_NAME]); a set
// variable applies when the flag is not on the command line, and then counts as given
// (cmd.Flags().Changed). Flags may come before or after positional arguments, persistent flags
// in any position, and "--" ends the flags.
func Execute(ctx context.Context, root *cobra.Command, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return ExecuteWithEnv(ctx, root, args, os.Environ(), stdin, stdout, stderr)
}

// ExecuteWithEnv is Execute with the environment given as "KEY=value" strings (os.Environ()).
func ExecuteWithEnv(ctx context.Context, root *cobra.Command, args, environ []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if args == nil {
		args = []string{} // nil would make cobra read os.Args
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd(args...)
	if !root.HasSubCommands() && len(args) == 1 && args[0] == "help" {
		args = []string{"--help"} // cobra has a help command only beside other subcommands
		root.SetArgs(args)
	}
	ctx = context.WithValue(ctx, envKey{}, envMap(environ))
	prepare(root, envPrefix(root), ctx, false)

	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	if cmd == nil {
		cmd = root
	}
	var ee exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", cmd.CommandPath(), ee.err)
		}
		return ee.code
	}
	if IsUsageError(err) || isCobraUsageError(err) {
		fmt.Fprintf(stderr, "%s: %v\nsee '%s --help'\n", cmd.CommandPath(), err, cmd.CommandPath())
		return 2
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "%s: interrupted\n", cmd.CommandPath())
		return 1
	}
	fmt.Fprintf(stderr, "%s: %v\n", cmd.CommandPath(), err)
	return 1
}

// isCobraUsageError recognises the errors cobra itself returns for a bad command line that did
// not pass through a wrapped validator (the completion command's, required flags, flag groups).
func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command ", "unknown flag", "unknown shorthand flag",
		"accepts ", "requires at least ", "requires at most ", "invalid argument ",
		"flag needs an argument", "required flag(s) ", "if any flags in the group ",
		"at least one of the flags in the group ", "bad flag syntax", "invalid argument"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

func envPrefix(root *cobra.Command) string {
	if p := root.Annotations[annotEnvPrefix]; p != "" {
		return p
	}
	return strings.ToUpper(strings.ReplaceAll(root.Name(), "-", "_"))
}

func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// envKey is the context key of the environment of one Execute.
type envKey struct{}

// prepare walks the tree (wrapping each command once): each flag's help names its variable,
// each command's argument validator first applies the environment to the flags not given (it is the first hook cobra
// runs after parsing, before any PreRun and before the required flags are checked) and marks
// its errors as usage errors, and a command with subcommands refuses an unknown one.
// The help and completion commands' flags have no variables (skip).
func prepare(cmd *cobra.Command, prefix string, ctx context.Context, skip bool) {
	// cobra keeps a subcommand's context from an earlier run: give each this run's.
	cmd.SetContext(ctx)
	skip = skip || cmd.HasParent() && cmd.Parent() == cmd.Root() &&
		(cmd.Name() == "completion" || cmd.Name() == "help")
	if !skip {
		annotateFlags(cmd, prefix)
	}
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	if cmd.Annotations[annotPrepared] == "" {
		cmd.Annotations[annotPrepared] = "true"
		validate := cmd.Args
		cmd.Args = func(c *cobra.Command, args []string) error {
			if env, ok := c.Context().Value(envKey{}).(map[string]string); ok && !skip {
				if err := applyFlagEnv(c, prefix, env); err != nil {
					return usageError{err}
				}
			}
			if validate == nil {
				if c.HasAvailableSubCommands() && len(args) > 0 {
					return unknownCommand(c, args[0])
				}
				return nil
			}
			if err := validate(c, args); err != nil {
				return usageError{err}
			}
			return nil
		}
		if cmd.HasSubCommands() && cmd.Run == nil && cmd.RunE == nil {
			// A group: help when called alone (exit 0), a usage error for an unknown
			// subcommand (cobra would show help and exit 0 there too).
			cmd.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
		}
	}
	for _, c := range cmd.Commands() {
		prepare(c, prefix, ctx, skip)
	}
}

func unknownCommand(c *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q for %q", name, c.CommandPath())
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = 2 // cobra's default, which SuggestionsFor does not apply
	}
	if s := c.SuggestionsFor(name); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, " or "))
	}
	return usageError{errors.New(msg)}
}

// flagEnv returns the variables of f, or nil for a flag the environment does not set.
func flagEnv(f *pflag.Flag, prefix string) []string {
	if f.Name == "help" || f.Name == "version" || f.Annotations[annotNoEnv] != nil {
		return nil
	}
	if vars := f.Annotations[annotEnv]; len(vars) > 0 {
		return vars
	}
	return []string{EnvName(prefix, f.Name)}
}

// annotateFlags appends " [$VAR]" to the help of cmd's own flags (inherited ones are the
// parent's flag objects, annotated there).
func annotateFlags(cmd *cobra.Command, prefix string) {
	annotate := func(f *pflag.Flag) {
		vars := flagEnv(f, prefix)
		if len(vars) == 0 {
			return
		}
		tag := " [$" + vars[0] + "]"
		if !strings.HasSuffix(f.Usage, tag) {
			f.Usage += tag
		}
	}
	cmd.LocalFlags().VisitAll(annotate)
	cmd.PersistentFlags().VisitAll(annotate)
}

// applyFlagEnv sets every flag of cmd that the command line did not give from its variable.
func applyFlagEnv(cmd *cobra.Command, prefix string, env map[string]string) error {
	var errs []error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		for _, name := range flagEnv(f, prefix) {
			v, ok := env[name]
			if !ok {
				continue
			}
			if err := cmd.Flags().Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q (--%s): %w", name, v, f.Name, err))
			}
			return
		}
	})
	return errors.Join(errs...)
}
