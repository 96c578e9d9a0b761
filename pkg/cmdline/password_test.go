package cmdline

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"telematics/internal/testutil"
	"telematics/internal/testutil/termtest"
)

type result struct {
	pw  string
	err error
}

func readAsync(term *termtest.Terminal, prompt string, confirm bool) chan result {
	ch := make(chan result, 1)
	go func() {
		pw, err := ReadPassword(term.TTY, term.TTY, prompt, confirm)
		ch <- result{pw, err}
	}()
	return ch
}

func TestReadPasswordPromptsWithoutEchoOnATerminal(t *testing.T) {
	term := termtest.New(t)
	ch := readAsync(term, "password for alice: ", false)
	term.TypeAt(t, "password for alice: ", 1, "correct horse battery")
	r := <-ch
	if r.err != nil || r.pw != "correct horse battery" {
		t.Fatalf("got %q, %v", r.pw, r.err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(term.Shown(), "password for alice: \r\n") {
			return errors.New("no newline after the prompt: " + term.Shown())
		}
		return nil
	})
	if strings.Contains(term.Shown(), "horse") {
		t.Errorf("the password was echoed: %q", term.Shown())
	}
	if echo, err := term.Echo(); err != nil || !echo {
		t.Errorf("echo not restored after reading (%v)", err)
	}
}

func TestReadPasswordConfirmsOnATerminal(t *testing.T) {
	term := termtest.New(t)
	ch := readAsync(term, "new password: ", true)
	term.TypeAt(t, "new password: ", 1, "s3cret-pass")
	term.TypeAt(t, "again: ", 1, "s3cret-pass")
	if r := <-ch; r.err != nil || r.pw != "s3cret-pass" {
		t.Fatalf("got %q, %v", r.pw, r.err)
	}

	ch = readAsync(term, "new password: ", true)
	term.TypeAt(t, "new password: ", 2, "s3cret-pass")
	term.TypeAt(t, "again: ", 2, "s3cret-typo")
	if r := <-ch; !errors.Is(r.err, ErrPasswordMismatch) {
		t.Fatalf("mismatch: got %q, %v", r.pw, r.err)
	}
	if strings.Contains(term.Shown(), "s3cret") {
		t.Errorf("a password was echoed: %q", term.Shown())
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
