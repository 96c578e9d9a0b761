package runcmd

import (
	"context"
	"fmt"
	"io"
	"os"
	"telematics/pkg/vehicle/fleet"
	"time"
)

// statusInterval is how often a status line is printed when the progress output is not a
// terminal.
const statusInterval = 10 * time.Second

// runWithProgress runs f until ctx ends, reporting on w (see progress) until every car has
// stopped.
func runWithProgress(ctx context.Context, f *fleet.Fleet, w io.Writer, interval time.Duration) (fleet.Stats, error) {
	progressCtx, stopProgress := context.WithCancel(context.Background())
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		progress(progressCtx, ctx, f, w, interval)
	}()
	st, err := f.Run(ctx)
	stopProgress()
	<-progressDone
	return st, err
}

// isTerminal reports whether w is a character device (a terminal), where a status line can be
// rewritten in place with \r.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress reports f on w until done ends: first how far connecting has come, then a live
// status line. On a terminal the line is rewritten about once a second; elsewhere (a log file,
// a pipe) a plain line is written every interval.
func progress(done, run context.Context, f *fleet.Fleet, w io.Writer, interval time.Duration) {
	if w == nil {
		<-done.Done()
		return
	}
	tty := isTerminal(w)
	start := time.Now()
	lastPrint := start
	settled := f.Settled()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	connectedLine := func() {
		st := f.Stats()
		msg := fmt.Sprintf("connected %d/%d cars in %s%s", st.Connected, st.Cars,
			time.Since(start).Round(10*time.Millisecond), failedSuffix(st))
		if st.Failed > 0 {
			msg += fmt.Sprintf(" (first failure: %s)", st.FirstFailure)
		}
		if tty {
			fmt.Fprint(w, "\r\x1b[K")
		}
		fmt.Fprintln(w, msg)
	}
	for {
		select {
		case <-done.Done():
			if settled != nil && f.Stats().Failed > 0 {
				connectedLine() // the failures must not go unreported
			}
			st := f.Stats()
			if tty {
				fmt.Fprint(w, "\r\x1b[K")
			}
			fmt.Fprintf(w, "stopped: %d/%d cars ran%s · telemetry sent %d · commands executed %d, rejected %d · whitelists acked %d · journal entries sent %d\n",
				st.Connected, st.Cars, failedSuffix(st), st.TelemetrySent, st.Executed, st.Rejected, st.Whitelists, st.EventsSent)
			return
		case <-settled:
			settled = nil
			connectedLine()
			lastPrint = time.Now()
			continue
		case <-tick.C:
		}
		st := f.Stats()
		now := time.Now()
		if !tty && now.Sub(lastPrint) < interval {
			continue
		}
		lastPrint = now
		if settled != nil && run.Err() == nil {
			printLine(w, tty, fmt.Sprintf("connected %d/%d cars%s…", st.Connected, st.Cars, failedSuffix(st)))
		} else {
			printLine(w, tty, statusLine(st))
		}
	}
}

func printLine(w io.Writer, tty bool, line string) {
	if tty {
		fmt.Fprintf(w, "\r\x1b[K%s", line)
		return
	}
	fmt.Fprintln(w, line)
}

func failedSuffix(st fleet.Stats) string {
	if st.Failed == 0 {
		return ""
	}
	return fmt.Sprintf(", %d failed", st.Failed)
}

func statusLine(st fleet.Stats) string {
	return fmt.Sprintf("online %d/%d cars%s · telemetry sent %d · commands executed %d, rejected %d",
		st.Online, st.Cars, failedSuffix(st), st.TelemetrySent, st.Executed, st.Rejected)
}
