// Package etcdrun starts a local etcd for the tools that need one (vehicle-sim's failover drill
// and cluster bench) and for tests (internal/etcdtest): Debian's etcd-server binary as a child
// process when it is installed, else an embedded etcd (go.etcd.io/etcd/server/v3/embed); one
// member or a small cluster on free loopback ports, its data in a directory the caller owns.
package etcdrun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Modes: how the members run.
const (
	ModeAuto     = ""         // the binary when found in PATH, else embedded
	ModeBinary   = "binary"   // Debian's etcd (package etcd-server), one child process per member
	ModeEmbedded = "embedded" // go.etcd.io/etcd/server/v3/embed, inside this process
)

// DefaultReadyTimeout bounds how long a start waits for the cluster to serve (a loaded 2-core
// machine elects a leader in well under a second; this is the bound for a failure).
const DefaultReadyTimeout = 30 * time.Second

// stopTimeout is how long a member process has to exit after SIGTERM before it is killed.
const stopTimeout = 10 * time.Second

// ErrNoBinary means ModeBinary was asked for and no etcd binary was found.
var ErrNoBinary = errors.New("no etcd binary in PATH (Debian: apt-get install etcd-server)")

// Options configure Start.
type Options struct {
	// Dir holds the members' data, member i in Dir/m<i>; the caller creates and removes it.
	Dir string
	// Members is the cluster's size; 0 means 1.
	Members int
	// Mode is ModeAuto, ModeBinary or ModeEmbedded.
	Mode string
	// Binary is the etcd program for ModeBinary and ModeAuto; "" looks up "etcd" in PATH.
	Binary string
	// NoFsync trades durability for speed (embedded members only; Debian's etcd 3.4 has no
	// such flag): for test data that is thrown away.
	NoFsync bool
	// Log receives the member processes' output (ModeBinary); nil discards it.
	Log io.Writer
	// ReadyTimeout bounds the wait until every member serves; 0 means DefaultReadyTimeout.
	ReadyTimeout time.Duration
}

// Cluster is a running etcd.
type Cluster struct {
	mode    string
	members []member
	clients []string
	opts    Options
	plan    []memberPlan
}

// member is one running etcd member.
type member interface{ stop() error }

// FindBinary returns the etcd program in PATH, or ErrNoBinary.
func FindBinary() (string, error) {
	p, err := exec.LookPath("etcd")
	if err != nil {
		return "", ErrNoBinary
	}
	return p, nil
}

// Start starts the cluster o describes and waits until every member serves clients. On error
// nothing is left running.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	if o.Dir == "" {
		return nil, errors.New("etcdrun: no data directory")
	}
	if o.Members <= 0 {
		o.Members = 1
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = DefaultReadyTimeout
	}
	mode := o.Mode
	if mode == ModeAuto || mode == ModeBinary {
		if o.Binary == "" {
			bin, err := FindBinary()
			switch {
			case err == nil:
				o.Binary, mode = bin, ModeBinary
			case mode == ModeBinary:
				return nil, err
			default:
				mode = ModeEmbedded
			}
		} else {
			mode = ModeBinary
		}
	}
	// A port FreeURL found free can be taken by another process before a member listens on it
	// (tests of several packages start etcds at once): an embedded start that finds its port
	// in use is made again on other ports, a bounded number of times.
	for attempt := 1; ; attempt++ {
		c, err := start(ctx, o, mode)
		if err == nil || mode != ModeEmbedded || attempt == maxPortAttempts || !portInUse(err) {
			return c, err
		}
	}
}

// maxPortAttempts bounds the starts of an embedded cluster whose ports were taken meanwhile.
const maxPortAttempts = 5

// portInUse reports whether err is a listener's "address already in use".
func portInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// start plans the members on free ports and starts them in mode; on error nothing is left
// running and the members' directories are removed (a new plan starts them afresh).
func start(ctx context.Context, o Options, mode string) (*Cluster, error) {
	plan, err := planMembers(o)
	if err != nil {
		return nil, err
	}
	c := &Cluster{mode: mode, opts: o, plan: plan}
	for _, p := range plan {
		c.clients = append(c.clients, p.client.String())
	}
	switch mode {
	case ModeBinary:
		err = c.startBinary(ctx, o, plan)
	case ModeEmbedded:
		err = c.startEmbedded(o, plan)
	default:
		return nil, fmt.Errorf("etcdrun: unknown mode %q: want binary or embedded", mode)
	}
	if err != nil {
		c.Close()
		for _, p := range plan {
			_ = os.RemoveAll(p.dir)
		}
		return nil, err
	}
	return c, nil
}

// memberPlan is one member's name, directory and URLs.
type memberPlan struct {
	name, dir, initial string
	peer, client       url.URL
}

func planMembers(o Options) ([]memberPlan, error) {
	plan := make([]memberPlan, o.Members)
	var initial []string
	for i := range plan {
		peer, err := FreeURL()
		if err != nil {
			return nil, err
		}
		client, err := FreeURL()
		if err != nil {
			return nil, err
		}
		plan[i] = memberPlan{name: fmt.Sprintf("m%d", i), dir: filepath.Join(o.Dir, fmt.Sprintf("m%d", i)), peer: peer, client: client}
		initial = append(initial, plan[i].name+"="+peer.String())
	}
	for i := range plan {
		plan[i].initial = strings.Join(initial, ",")
	}
	return plan, nil
}

// startEmbedded starts every member in this process and waits until each is ready.
func (c *Cluster) startEmbedded(o Options, plan []memberPlan) error {
	var started []*embed.Etcd
	for _, p := range plan {
		e, err := startEmbeddedMember(o, p)
		if err != nil {
			return err
		}
		c.members = append(c.members, embedded{e})
		started = append(started, e)
	}
	return waitEmbedded(o, started)
}

// startEmbeddedMember starts member p in this process (on its data, if it has any).
func startEmbeddedMember(o Options, p memberPlan) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = p.name, p.dir
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{p.peer}, []url.URL{p.peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{p.client}, []url.URL{p.client}
	cfg.InitialCluster = p.initial
	cfg.InitialClusterToken = "etcdrun"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = o.NoFsync
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd %s: %w", p.name, err)
	}
	return e, nil
}

// waitEmbedded waits until every member in started serves clients.
func waitEmbedded(o Options, started []*embed.Etcd) error {
	deadline := time.After(o.ReadyTimeout)
	for _, e := range started {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			return fmt.Errorf("embedded etcd failed: %w", err)
		case <-deadline:
			return fmt.Errorf("embedded etcd not ready within %v", o.ReadyTimeout)
		}
	}
	return nil
}

type embedded struct{ e *embed.Etcd }

func (m embedded) stop() error { m.e.Close(); return nil }

// startBinary starts one etcd process per member and polls each one's /health.
func (c *Cluster) startBinary(ctx context.Context, o Options, plan []memberPlan) error {
	for _, p := range plan {
		if err := os.MkdirAll(p.dir, 0o700); err != nil {
			return err
		}
		cmd := exec.Command(o.Binary,
			"--name", p.name, "--data-dir", p.dir,
			"--listen-client-urls", p.client.String(), "--advertise-client-urls", p.client.String(),
			"--listen-peer-urls", p.peer.String(), "--initial-advertise-peer-urls", p.peer.String(),
			"--initial-cluster", p.initial, "--initial-cluster-token", "etcdrun", "--initial-cluster-state", "new")
		out := o.Log
		if out == nil {
			out = io.Discard
		}
		cmd.Stdout, cmd.Stderr = out, out
		// If this program dies, so does its etcd.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", o.Binary, err)
		}
		pm := &process{cmd: cmd, exited: make(chan struct{})}
		go func() { pm.err = cmd.Wait(); close(pm.exited) }()
		c.members = append(c.members, pm)
	}
	deadline := time.Now().Add(o.ReadyTimeout)
	for i, p := range plan {
		pm := c.members[i].(*process)
		for {
			err := health(ctx, p.client)
			if err == nil {
				break
			}
			select {
			case <-pm.exited:
				return fmt.Errorf("etcd %s exited: %v", p.name, pm.err)
			default:
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("etcd %s not healthy at %s within %v: %w", p.name, p.client.String(), o.ReadyTimeout, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// health asks a member's /health endpoint.
func health(ctx context.Context, client url.URL) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, client.String()+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var h struct {
		Health string `json:"health"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&h); err != nil {
		return fmt.Errorf("/health: %w", err)
	}
	if resp.StatusCode != http.StatusOK || h.Health != "true" {
		return fmt.Errorf("/health: %s, health %q", resp.Status, h.Health)
	}
	return nil
}

// process is a member running as a child process.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

func (p *process) stop() error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("etcd (pid %d) did not stop within %v after SIGTERM; killed", p.cmd.Process.Pid, stopTimeout)
	}
}

// PIDs are the member processes (ModeBinary; none for embedded members, which run in this
// process), for a caller that measures them.
func (c *Cluster) PIDs() []int {
	var out []int
	for _, m := range c.members {
		if p, ok := m.(*process); ok {
			out = append(out, p.cmd.Process.Pid)
		}
	}
	return out
}

// Mode is how the members run: ModeBinary or ModeEmbedded.
func (c *Cluster) Mode() string { return c.mode }

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string { return append([]string(nil), c.clients...) }

// StoreURL is the cluster as a gateway's --store value: etcd://HOST:PORT[,HOST:PORT…].
func (c *Cluster) StoreURL() string {
	hosts := make([]string, len(c.clients))
	for i, e := range c.clients {
		hosts[i] = strings.TrimPrefix(e, "http://")
	}
	return "etcd://" + strings.Join(hosts, ",")
}

// StopMember stops member i (the others keep running); stopping a stopped member does nothing.
func (c *Cluster) StopMember(i int) error {
	if i >= len(c.members) || c.members[i] == nil {
		return nil
	}
	err := c.members[i].stop()
	c.members[i] = nil
	return err
}

// RestartMember starts stopped member i again on its data and its addresses and waits until
// it serves clients; a running member is left alone. Embedded members only.
func (c *Cluster) RestartMember(i int) error {
	if i < 0 || i >= len(c.members) {
		return fmt.Errorf("etcdrun: no member %d", i)
	}
	if c.members[i] != nil {
		return nil
	}
	if c.mode != ModeEmbedded {
		return fmt.Errorf("etcdrun: restarting a member is supported for embedded members only, not %s", c.mode)
	}
	e, err := startEmbeddedMember(c.opts, c.plan[i])
	if err != nil {
		return err
	}
	c.members[i] = embedded{e}
	return waitEmbedded(c.opts, []*embed.Etcd{e})
}

// Close stops every member; it is idempotent.
func (c *Cluster) Close() error {
	var errs []error
	for i := range c.members {
		errs = append(errs, c.StopMember(i))
	}
	return errors.Join(errs...)
}

// FreeURL is an http URL on a loopback port that was free a moment ago (etcd must be told its
// advertised URLs before it listens, so port 0 will not do).
func FreeURL() (url.URL, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, err
	}
	addr := ln.Addr().String()
	ln.Close()
	return url.URL{Scheme: "http", Host: addr}, nil
}
