package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"time"

	"telematics/pkg/protocol"
)

// fleet is the parent's view of the load processes: it splits the cars, sends every process
// the same instructions, and adds up their counters.
type fleet struct {
	procs []*loadProc
	sizes []int // cars per process
	cars  int
	ops   int // instructions sent to every process
}

// startFleet starts the load processes for creds against addr.
func startFleet(ctx context.Context, cfg Config, env Env, addr, caPEM string, creds []protocol.Credentials) (*fleet, error) {
	n := len(creds)
	procs := cfg.Procs
	inProcess := procs == 0 && n <= cfg.CarsPerProc
	if procs == 0 {
		procs = (n + cfg.CarsPerProc - 1) / cfg.CarsPerProc
	}
	procs = min(procs, n)
	sources := cfg.SourceAddrs
	if sources == 0 && n > carsPerSourceAddr {
		sources = (n + carsPerSourceAddr - 1) / carsPerSourceAddr
	}
	var sourceIPs []string
	for i := 1; i <= sources; i++ {
		sourceIPs = append(sourceIPs, fmt.Sprintf("127.0.0.%d", i))
	}
	f := &fleet{cars: n}
	for i := range procs {
		lo, hi := i*n/procs, (i+1)*n/procs
		job := loadJob{
			Broker: addr, Creds: creds[lo:hi], SourceIPs: sourceIPs, FirstIndex: lo,
			ConnectRate:        cfg.ConnectRate / float64(procs),
			ConnectConcurrency: max(1, cfg.ConnectConcurrency/procs),
			ConnectTimeout:     cfg.ConnectTimeout, KeepAlive: cfg.KeepAlive, Inflight: cfg.Inflight,
			CAPEM: caPEM,
		}
		var cmd *exec.Cmd
		if !inProcess {
			if env.LoadProcess != nil {
				cmd = env.LoadProcess()
			} else {
				self, err := os.Executable()
				if err != nil {
					f.stop()
					return nil, fmt.Errorf("find this program to start load processes: %w", err)
				}
				cmd = exec.Command(self, "bench", "worker")
			}
			cmd.Stderr = env.Stderr
		}
		p, err := startLoadProc(ctx, cmd, job)
		if err != nil {
			f.stop()
			return nil, err
		}
		f.procs = append(f.procs, p)
		f.sizes = append(f.sizes, hi-lo)
	}
	return f, nil
}

// connect asks every process to have connected its share of the first `target` cars.
func (f *fleet) connect(target int) error {
	f.ops++
	var errs []error
	for i, p := range f.procs {
		upto := (f.sizes[i]*target + f.cars - 1) / f.cars
		errs = append(errs, p.send(op{Op: opConnect, Upto: upto}))
	}
	return errors.Join(errs...)
}

func (f *fleet) send(o op) error {
	f.ops++
	var errs []error
	for _, p := range f.procs {
		errs = append(errs, p.send(o))
	}
	return errors.Join(errs...)
}

// wait waits until every process has completed every instruction, calling tick every second.
func (f *fleet) wait(ctx context.Context, tick func() error) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		done := true
		for _, p := range f.procs {
			select {
			case <-p.done:
				return fmt.Errorf("load process %d ended early: %v", p.pid, p.err)
			default:
			}
			if p.counters().Ops < f.ops {
				done = false
			}
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if err := tick(); err != nil {
				return err
			}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// counters adds up the latest reports.
func (f *fleet) counters() Counters {
	var c Counters
	for _, p := range f.procs {
		c.merge(p.counters())
	}
	return c
}

// pids are the load processes (this one, for in-process load).
func (f *fleet) pids() []int {
	seen := map[int]bool{}
	var out []int
	for _, p := range f.procs {
		if !seen[p.pid] {
			seen[p.pid] = true
			out = append(out, p.pid)
		}
	}
	return out
}

// stop disconnects every car and returns the final counters with the latency histograms.
func (f *fleet) stop() (Counters, error) {
	var (
		mu   sync.Mutex
		all  Counters
		errs []error
		wg   sync.WaitGroup
	)
	for _, p := range f.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.stop(2 * time.Minute)
			mu.Lock()
			defer mu.Unlock()
			all.merge(c)
			errs = append(errs, err)
		}()
	}
	wg.Wait()
	f.procs = nil
	return all, errors.Join(errs...)
}

// loaderCPU is the CPU time the load processes have used so far.
func (f *fleet) loaderCPU() time.Duration {
	var total time.Duration
	for _, pid := range f.pids() {
		if s, err := readProc(pid); err == nil {
			total += s.CPU
		}
	}
	return total
}
