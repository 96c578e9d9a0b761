package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// A load process ("vehicle-sim bench worker", started by the bench itself) runs a share of the
// cars, so that no process holds more sockets than its descriptor limit allows. It reads a
// loadJob, then ops, as JSON values on stdin, and writes Counters as JSON lines on stdout:
// every reportInterval, after every completed op, and a final one (with the latency
// histograms) after "stop" or when stdin ends. The same code runs in-process for small
// fleets, over pipes.

// reportInterval is how often a load process reports its counters.
const reportInterval = 200 * time.Millisecond

// RunWorker is the load process: `vehicle-sim bench worker`.
func RunWorker(ctx context.Context, in io.Reader, out io.Writer) error {
	dec := json.NewDecoder(bufio.NewReaderSize(in, 1<<20))
	var job loadJob
	if err := dec.Decode(&job); err != nil {
		return fmt.Errorf("read load job: %w", err)
	}
	e, err := newLoadEngine(job)
	if err != nil {
		return err
	}
	var (
		outMu sync.Mutex
		enc   = json.NewEncoder(out)
		ops   int
	)
	report := func(final bool) error {
		c := e.counters(final)
		outMu.Lock()
		defer outMu.Unlock()
		c.Ops = ops
		return enc.Encode(c)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(reportInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if report(false) != nil {
					return
				}
			}
		}
	}()
	defer func() {
		close(done)
		wg.Wait()
	}()

	for {
		var o op
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) || (err == nil && o.Op == opStop) || ctx.Err() != nil {
			e.shutdown()
			outMu.Lock()
			ops++
			outMu.Unlock()
			return report(true)
		}
		if err != nil {
			e.shutdown()
			return fmt.Errorf("read op: %w", err)
		}
		if err := e.do(ctx, o); err != nil {
			e.shutdown()
			return err
		}
		outMu.Lock()
		ops++
		outMu.Unlock()
		if err := report(false); err != nil {
			e.shutdown()
			return err
		}
	}
}

// loadProc is the parent's handle on one load process.
type loadProc struct {
	pid   int
	enc   *json.Encoder
	stdin io.Closer
	wait  func() error
	kill  func() // nil in-process

	mu     sync.Mutex
	latest Counters
	final  *Counters
	err    error
	lines  chan struct{} // signalled on every report
	done   chan struct{} // closed when the output ends
}

// startLoadProc runs job in a child process (cmd, whose stdin and stdout it takes), or, with
// cmd nil, in this process.
func startLoadProc(ctx context.Context, cmd *exec.Cmd, job loadJob) (*loadProc, error) {
	p := &loadProc{lines: make(chan struct{}, 1), done: make(chan struct{})}
	var stdout io.Reader
	if cmd != nil {
		in, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start load process: %w", err)
		}
		p.pid, p.enc, p.stdin, stdout, p.wait = cmd.Process.Pid, json.NewEncoder(in), in, out, cmd.Wait
		p.kill = func() { _ = cmd.Process.Kill() }
	} else {
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		errc := make(chan error, 1)
		go func() {
			err := RunWorker(ctx, inR, outW)
			outW.CloseWithError(err)
			inR.Close()
			errc <- err
		}()
		p.pid, p.enc, p.stdin, stdout = os.Getpid(), json.NewEncoder(inW), inW, outR
		p.wait = func() error { return <-errc }
	}
	go p.readReports(stdout)
	if err := p.enc.Encode(job); err != nil {
		p.stdin.Close()
		_ = p.wait()
		return nil, fmt.Errorf("send load job: %w", err)
	}
	return p, nil
}

func (p *loadProc) readReports(r io.Reader) {
	defer close(p.done)
	dec := json.NewDecoder(r)
	for {
		var c Counters
		if err := dec.Decode(&c); err != nil {
			if !errors.Is(err, io.EOF) {
				p.mu.Lock()
				p.err = err
				p.mu.Unlock()
			}
			return
		}
		p.mu.Lock()
		p.latest = c
		if c.Final {
			p.final = &c
		}
		p.mu.Unlock()
		select {
		case p.lines <- struct{}{}:
		default:
		}
	}
}

func (p *loadProc) send(o op) error { return p.enc.Encode(o) }

func (p *loadProc) counters() Counters {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.latest
}

// stop asks for the final report and waits for the process to end (bounded by timeout).
func (p *loadProc) stop(timeout time.Duration) (Counters, error) {
	_ = p.send(op{Op: opStop})
	p.stdin.Close()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		if p.kill != nil {
			p.kill()
			_ = p.wait()
		}
		return p.counters(), fmt.Errorf("load process %d did not stop within %s", p.pid, timeout)
	}
	werr := p.wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.final == nil {
		return p.latest, errors.Join(errors.New("load process ended without its final report"), p.err, werr)
	}
	return *p.final, werr
}
