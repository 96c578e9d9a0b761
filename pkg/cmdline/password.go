package cmdline

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/term"
)

// maxPasswordBytes bounds a password read from a pipe or a terminal.
const maxPasswordBytes = 4096

// ErrPasswordMismatch means the two passwords typed at a confirming prompt differ.
var ErrPasswordMismatch = errors.New("the two passwords differ; nothing was changed")

// ReadPassword reads a password. When stdin is a terminal it writes prompt to stderr and reads
// a line without echo (twice, and compares them, when confirm is true: for a password being
// set). Otherwise it reads the first line of stdin (`echo 'a long passphrase' | COMMAND`),
// without a prompt. It never echoes or logs the password; an empty one is ErrNoPassword.
func ReadPassword(stdin io.Reader, stderr io.Writer, prompt string, confirm bool) (string, error) {
	fd, ok := terminalFd(stdin)
	if !ok {
		return readPasswordLine(stdin)
	}
	pw, err := promptNoEcho(fd, stderr, prompt)
	if err != nil {
		return "", err
	}
	if confirm {
		again, err := promptNoEcho(fd, stderr, "again: ")
		if err != nil {
			return "", err
		}
		if again != pw {
			return "", ErrPasswordMismatch
		}
	}
	return pw, nil
}

// terminalFd returns the descriptor of r when r is a terminal.
func terminalFd(r io.Reader) (int, bool) {
	f, ok := r.(interface{ Fd() uintptr })
	if !ok {
		return 0, false
	}
	fd := int(f.Fd())
	return fd, term.IsTerminal(fd)
}

func promptNoEcho(fd int, stderr io.Writer, prompt string) (string, error) {
	if stderr == nil {
		stderr = io.Discard
	}
	fmt.Fprint(stderr, prompt)
	b, err := term.ReadPassword(fd)
	fmt.Fprintln(stderr) // the Enter the terminal did not echo
	if err != nil {
		return "", fmt.Errorf("read password from the terminal: %w", err)
	}
	if len(b) > maxPasswordBytes {
		return "", fmt.Errorf("password longer than %d bytes", maxPasswordBytes)
	}
	if len(b) == 0 {
		return "", errors.New("empty password")
	}
	return string(b), nil
}

// readPasswordLine reads up to the first newline of r, one byte at a time so that nothing after
// the line is consumed.
func readPasswordLine(r io.Reader) (string, error) {
	var line []byte
	var b [1]byte
	for {
		n, err := r.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			if len(line) == maxPasswordBytes {
				return "", fmt.Errorf("password on stdin longer than %d bytes", maxPasswordBytes)
			}
			line = append(line, b[0])
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("read password from stdin: %w", err)
		}
	}
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	if len(line) == 0 {
		return "", ErrNoPassword
	}
	return string(line), nil
}
