// Package termtest gives a test a real pseudo-terminal: the command under test reads and
// prompts on its TTY, and the test watches the screen and types at the prompts, as a person
// would (password prompts that must not echo).
package termtest

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"telematics/internal/testutil"
)

// Terminal is a pseudo-terminal: TTY is what the command gets as stdin and stderr; what the
// screen shows is read from the other end.
type Terminal struct {
	TTY  *os.File
	ptmx *os.File

	mu     sync.Mutex
	screen bytes.Buffer
}

// New opens a pseudo-terminal, or skips the test where there is none; the test's cleanup
// closes it.
func New(t testing.TB) *Terminal {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	term := &Terminal{TTY: tty, ptmx: ptmx}
	done := make(chan struct{})
	go func() { // reads what the terminal shows until it is closed
		defer close(done)
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
		<-done
	})
	return term
}

// Shown is everything the screen has shown so far.
func (term *Terminal) Shown() string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return term.screen.String()
}

// Echo reports whether the terminal echoes what is typed.
func (term *Terminal) Echo() (bool, error) {
	tio, err := unix.IoctlGetTermios(int(term.TTY.Fd()), unix.TCGETS)
	if err != nil {
		return false, err
	}
	return tio.Lflag&unix.ECHO != 0, nil
}

// TypeAt waits until the screen shows prompt for the n-th time and the terminal no longer
// echoes, then types line and Enter.
func (term *Terminal) TypeAt(t testing.TB, prompt string, n int, line string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		if strings.Count(term.Shown(), prompt) < n {
			return errors.New("prompt not shown yet: " + term.Shown())
		}
		echo, err := term.Echo()
		if err != nil {
			return err
		}
		if echo {
			return errors.New("echo still on")
		}
		return nil
	})
	if _, err := term.ptmx.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
}
