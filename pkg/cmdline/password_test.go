package cmdline

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"telematics/internal/testutil"
)

// terminal is a pseudo-terminal: tty is what the command gets as stdin and stderr, and what
// the screen shows is read from the other end.
type terminal struct {
	tty    *os.File
	ptmx   *os.File
	mu     sync.Mutex
	screen bytes.Buffer
	done   chan struct{}
}

func newTerminal(t *testing.T) *terminal {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	term := &terminal{tty: tty, ptmx: ptmx, done: make(chan struct{})}
	go func() {
		defer close(term.done)
		buf := make([]byte, 1024)
		for {
			n, err := ptmx.Read(buf)
			term.mu.Lock()
			term.screen.Write(buf[:n])
			term.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		tty.Close()
		ptmx.Close()
		<-term.done
	})
	return term
}

func (term *terminal) shown() string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return term.screen.String()
}

// typeLine waits until the screen shows prompt for the n-th time and the terminal no longer
// echoes, then types line and Enter.
func (term *terminal) typeLine(t *testing.T, prompt string, n int, line string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		if strings.Count(term.shown(), prompt) < n {
			return errors.New("prompt not shown yet: " + term.shown())
		}
		tio, err := unix.IoctlGetTermios(int(term.tty.Fd()), unix.TCGETS)
		if err != nil {
			return err
		}
		if tio.Lflag&unix.ECHO != 0 {
			return errors.New("echo still on")
		}
		return nil
	})
	if _, err := term.ptmx.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
}

type result struct {
	pw  string
	err error
}

func readAsync(term *terminal, prompt string, confirm bool) chan result {
	ch := make(chan result, 1)
	go func() {
		pw, err := ReadPassword(term.tty, term.tty, prompt, confirm)
		ch <- result{pw, err}
	}()
	return ch
}

func TestReadPasswordPromptsWithoutEchoOnATerminal(t *testing.T) {
	term := newTerminal(t)
	ch := readAsync(term, "password for alice: ", false)
	term.typeLine(t, "password for alice: ", 1, "correct horse battery")
	r := <-ch
	if r.err != nil || r.pw != "correct horse battery" {
		t.Fatalf("got %q, %v", r.pw, r.err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(term.shown(), "password for alice: \r\n") {
			return errors.New("no newline after the prompt: " + term.shown())
		}
		return nil
	})
	if strings.Contains(term.shown(), "horse") {
		t.Errorf("the password was echoed: %q", term.shown())
	}
	tio, err := unix.IoctlGetTermios(int(term.tty.Fd()), unix.TCGETS)
	if err != nil || tio.Lflag&unix.ECHO == 0 {
		t.Errorf("echo not restored after reading (%v)", err)
	}
}

func TestReadPasswordConfirmsOnATerminal(t *testing.T) {
	term := newTerminal(t)
	ch := readAsync(term, "new password: ", true)
	term.typeLine(t, "new password: ", 1, "s3cret-pass")
	term.typeLine(t, "again: ", 1, "s3cret-pass")
	if r := <-ch; r.err != nil || r.pw != "s3cret-pass" {
		t.Fatalf("got %q, %v", r.pw, r.err)
	}

	ch = readAsync(term, "new password: ", true)
	term.typeLine(t, "new password: ", 2, "s3cret-pass")
	term.typeLine(t, "again: ", 2, "s3cret-typo")
	if r := <-ch; !errors.Is(r.err, ErrPasswordMismatch) {
		t.Fatalf("mismatch: got %q, %v", r.pw, r.err)
	}
	if strings.Contains(term.shown(), "s3cret") {
		t.Errorf("a password was echoed: %q", term.shown())
	}
}

func TestReadPasswordFromAPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		io.WriteString(w, "from a pipe\r\nnext line\n")
		w.Close()
	}()
	var stderr bytes.Buffer
	pw, err := ReadPassword(r, &stderr, "password: ", true)
	if err != nil || pw != "from a pipe" || stderr.Len() != 0 {
		t.Fatalf("got %q, %v, prompt %q", pw, err, stderr.String())
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "next line\n" {
		t.Errorf("read past the password's line: left %q", rest)
	}

	tests := []struct {
		in   string
		want string
		err  error
	}{
		{"pw", "pw", nil},
		{"pw\n", "pw", nil},
		{"", "", ErrNoPassword},
		{"\nsecond\n", "", ErrNoPassword},
	}
	for _, tc := range tests {
		pw, err := ReadPassword(strings.NewReader(tc.in), io.Discard, "p: ", false)
		if pw != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("%q: got %q, %v", tc.in, pw, err)
		}
	}
	if _, err := ReadPassword(strings.NewReader(strings.Repeat("x", 5000)), io.Discard, "", false); err == nil {
		t.Error("a 5000-byte password was taken")
	}
}
