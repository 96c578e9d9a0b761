package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// `gateway demo --json | jq .ok`: the story goes to stderr, stdout is one JSON line.
func TestDemoJSONStdoutIsOneJSONLine(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	var out, errb bytes.Buffer
	code := Main(context.Background(), []string{"--json", "--cars", "2"}, &out, &errb)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	var sum Summary
	if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &sum) != nil {
		t.Fatalf("stdout is not one JSON line: %q", out.String())
	}
	if code != 0 || !sum.OK {
		t.Fatalf("demo failed: %d %+v\n%s", code, sum, errb.String())
	}
	if !strings.Contains(errb.String(), "[1] Start the gateway") {
		t.Fatalf("the story is not on stderr: %q", errb.String())
	}
	assertEmpty(t, os.Getenv("TMPDIR"))
}

// closingWriter is a stdout whose reader goes away after the first write (`| head -1`).
type closingWriter struct {
	mu     sync.Mutex
	writes int
}

func (w *closingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	if w.writes > 1 {
		return 0, syscall.EPIPE
	}
	return len(p), nil
}

// `gateway demo | head -1`: the demo stops, and its temporary directory with the gateway's
// signing key, admin token and TOTP key is removed.
func TestDemoStopsAndCleansUpWhenStdoutCloses(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	var errb bytes.Buffer
	w := &closingWriter{}
	code := Main(context.Background(), []string{"--cars", "2"}, w, &errb)
	if code != 1 || !strings.Contains(errb.String(), "stdout was closed") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	if w.writes > 4 {
		t.Fatalf("the demo went on telling the story to a closed stdout: %d writes", w.writes)
	}
	assertEmpty(t, tmp)
}

// interruptingWriter cancels the run when the story reaches step 3 (Ctrl-C).
type interruptingWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	cancel context.CancelFunc
}

func (w *interruptingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if bytes.HasPrefix(p, []byte("[3]")) {
		w.cancel()
	}
	return w.buf.Write(p)
}

// Ctrl-C says "interrupted" once, not "FAILED: context canceled" for every remaining step.
func TestDemoInterruptedSaysSoOnce(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &interruptingWriter{cancel: cancel}
	var errb bytes.Buffer
	code := Main(ctx, []string{"--cars", "2"}, w, &errb)
	out := w.buf.String()
	if code != 1 || strings.Count(out, "interrupted") != 2 || strings.Contains(out, "FAILED") || strings.Contains(out, "[4]") {
		t.Fatalf("exit %d, narration:\n%s", code, out)
	}
	assertEmpty(t, tmp)
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 0 {
		t.Fatalf("%s not cleaned up: %v %v", dir, ents, err)
	}
}

// The whole story, run as the binary runs it but through Run: every step did what the story
// expects, from starting the gateway to the audit log holding no secret.
func TestDemoRunsEveryStep(t *testing.T) {
	var out bytes.Buffer
	sum := Run(context.Background(), Options{Cars: 2, DataDir: t.TempDir(), Out: &out, Logger: slog.New(slog.DiscardHandler)})
	if !sum.OK || sum.Interrupted || sum.Cars != 2 {
		t.Fatalf("demo: ok %v, interrupted %v, cars %d\n%s", sum.OK, sum.Interrupted, sum.Cars, out.String())
	}
	if len(sum.Steps) != 16 {
		t.Errorf("%d steps, want 16:\n%s", len(sum.Steps), out.String())
	}
	for _, st := range sum.Steps {
		if !st.OK {
			t.Errorf("step %q failed: %s", st.Name, st.Detail)
		}
	}
	first, last := sum.Steps[0].Name, sum.Steps[len(sum.Steps)-1].Name
	if !strings.HasPrefix(first, "Start the gateway") || !strings.HasPrefix(last, "No code, secret or password") {
		t.Errorf("the story runs from %q to %q", first, last)
	}
	if !strings.Contains(out.String(), "All 16 steps did what the story expects") {
		t.Errorf("the narration does not end as a success:\n%s", out.String())
	}
}
