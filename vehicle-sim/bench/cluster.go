package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"telematics/internal/etcdrun"
	"telematics/pkg/sign"
)

// ModeCluster is the gateway as a cluster: etcd (internal/etcdrun: Debian's etcd when
// installed, else embedded in this process), the standalone broker, and Config.Replicas
// `gateway serve --external-broker … --store …` processes, each with its own HTTP address and
// data directory holding the same key files (made by the first replica's --init).
const ModeCluster = "cluster"

// Stores a cluster's replicas keep their state in.
const (
	StoreEtcd  = "etcd"  // one etcd for every replica: --store etcd://HOST:PORT
	StoreBbolt = "bbolt" // each replica its own bbolt file (no --store): meaningful for one replica only
)

// ErrNoStoreFlag means the gateway binary has no --store flag: it cannot keep its state in
// etcd (issue 11's store is not in this build).
var ErrNoStoreFlag = errors.New("this gateway has no --store flag: it cannot keep its state in etcd (build one with the etcd store, issue 11)")

// sharedFiles are the data directory's files every replica must hold alike: the signing key
// (tokens and whitelists), the TOTP sealing key, the admin token. The bbolt file is not shared.
func sharedFile(name string) bool {
	// replica.id names one replica (its broker client id): a copy would make two replicas
	// take each other's session over.
	return !strings.HasSuffix(name, ".db") && !strings.HasSuffix(name, ".lock") && !strings.HasSuffix(name, ".log") &&
		name != "replica.id"
}

// replica is one gateway process of a cluster, with what it takes to start it again.
type replica struct {
	name    string // gateway-1, gateway-2, …
	data    string
	httpURL string
	env     []string
	args    []string
	proc    *sutProc
}

// gatewaySupportsStore reports whether the gateway binary has a --store flag (from
// `gateway serve --help`).
func gatewaySupportsStore(ctx context.Context, gatewayBin string) (bool, error) {
	cmd := exec.CommandContext(ctx, gatewayBin, "serve", "--help")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("%s serve --help: %w\n%s", gatewayBin, err, out)
	}
	return helpHasFlag(out, "--store"), nil
}

// helpHasFlag reports whether a cobra help text lists flag (as "--store " or "--store=").
func helpHasFlag(help []byte, flag string) bool {
	for _, line := range bytes.Split(help, []byte("\n")) {
		f := bytes.Fields(line)
		for _, w := range f {
			w = bytes.TrimSuffix(w, []byte(","))
			if string(w) == flag || bytes.HasPrefix(w, []byte(flag+"=")) {
				return true
			}
		}
	}
	return false
}

// startCluster starts etcd (StoreEtcd), the standalone broker and cfg.Replicas gateways.
// gwEnv is every replica's environment.
func (s *sut) startCluster(ctx context.Context, cfg Config, bins binaries, gwEnv []string, progress io.Writer) error {
	n := max(cfg.Replicas, 1)
	var storeArgs []string
	if cfg.Store == StoreEtcd {
		ok, err := gatewaySupportsStore(ctx, bins.gateway)
		if err != nil {
			return err
		}
		if !ok {
			return ErrNoStoreFlag
		}
		logFile, err := os.Create(filepath.Join(s.dir, "etcd.log"))
		if err != nil {
			return err
		}
		s.etcdLog = logFile
		s.etcd, err = etcdrun.Start(ctx, etcdrun.Options{Dir: filepath.Join(s.dir, "etcd"), Log: logFile})
		if err != nil {
			return fmt.Errorf("start etcd: %w", err)
		}
		fmt.Fprintf(progress, "etcd (%s) on %s\n", s.etcd.Mode(), strings.Join(s.etcd.Endpoints(), ","))
		for _, pid := range s.etcd.PIDs() {
			// Measured like the others; stopped by s.etcd.Close, not by the process list.
			s.procs = append(s.procs, &sutProc{role: "etcd", pid: pid})
		}
		storeArgs = []string{"--store", s.etcd.StoreURL()}
	} else if n > 1 && !cfg.unsharedReplicas {
		return fmt.Errorf("%d replicas on %s: replicas share their state only in etcd (--store etcd)", n, cfg.Store)
	}

	first := filepath.Join(s.dir, "gateway-data")
	// The broker needs the gateway's public key before any gateway runs: make the key the first
	// replica will load (and the others will get a copy of).
	signer, _, err := sign.LoadOrCreate(filepath.Join(first, "gateway.key"))
	if err != nil {
		return err
	}
	pemPub, err := sign.PublicPEM(signer.Public())
	if err != nil {
		return err
	}
	pubPath := filepath.Join(first, "gateway.pub")
	if err := os.WriteFile(pubPath, pemPub, 0o644); err != nil {
		return err
	}
	br, err := startProc(s.dir, "broker", nil, bins.broker, "--gateway-pubkey", pubPath, "--mqtt-addr", s.mqttAddr, "--ws-addr", "off")
	if err != nil {
		return err
	}
	br.holdsBroker = true
	s.procs = append(s.procs, br)
	if err := waitListening(ctx, br, s.mqttAddr); err != nil {
		return err
	}
	for i := range n {
		rp := &replica{name: fmt.Sprintf("gateway-%d", i+1), data: first, env: gwEnv}
		if i > 0 {
			rp.data = fmt.Sprintf("%s-%d", first, i+1)
			// The first replica made the keys and the admin token: every replica holds the same.
			if err := copySharedFiles(first, rp.data); err != nil {
				return err
			}
		}
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		rp.httpURL = "http://" + addr
		rp.args = append([]string{"serve", "--init", "--data", rp.data, "--http-addr", addr, "--ws-addr", "off",
			"--tls-mqtt-addr", "off", "--tls-ws-addr", "off", "--tls-http-addr", "off", "--external-broker", "tcp://" + s.mqttAddr}, storeArgs...)
		s.replicas = append(s.replicas, rp)
		if err := s.startReplica(ctx, rp); err != nil {
			return err
		}
	}
	s.gatewayURL = s.replicas[0].httpURL
	return nil
}

// startReplica starts (or starts again) rp and waits until it is ready.
func (s *sut) startReplica(ctx context.Context, rp *replica) error {
	p, err := startProc(s.dir, rp.name, rp.env, s.bins.gateway, rp.args...)
	if err != nil {
		return err
	}
	p.holdsGateway = true
	rp.proc = p
	s.procs = append(s.procs, p)
	return waitGatewayReady(ctx, rp.httpURL, p)
}

// killReplica ends replica i with SIGKILL (no drain, as a crash) and waits until it is gone;
// the admin API moves to a replica still running.
func (s *sut) killReplica(i int) error {
	rp := s.replicas[i]
	if rp.proc == nil {
		return fmt.Errorf("%s is not running", rp.name)
	}
	rp.proc.stopSignalled = true
	if err := rp.proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %s: %w", rp.name, err)
	}
	<-rp.proc.exited
	s.procs = removeProc(s.procs, rp.proc)
	rp.proc = nil
	for _, other := range s.replicas {
		if other.proc != nil {
			s.gatewayURL = other.httpURL
			break
		}
	}
	return nil
}

func removeProc(ps []*sutProc, p *sutProc) []*sutProc {
	out := ps[:0]
	for _, q := range ps {
		if q != p {
			out = append(out, q)
		}
	}
	return out
}

// copySharedFiles copies the shared files of the data directory from into to (created 0700),
// keeping each file's mode (the keys and the token are 0600).
func copySharedFiles(from, to string) error {
	if err := os.MkdirAll(to, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || !sharedFile(e.Name()) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, info.Mode().Perm()); err != nil {
			return fmt.Errorf("copy %s to %s: %w", e.Name(), to, err)
		}
	}
	return nil
}

// waitGatewayReady waits until the gateway at url answers /readyz (or p exits).
func waitGatewayReady(ctx context.Context, url string, p *sutProc) error {
	s := &sut{gatewayURL: url, procs: []*sutProc{p}}
	return s.waitReady(ctx)
}

// pollUntil calls check every interval until it returns nil, timeout passes or ctx ends.
func pollUntil(ctx context.Context, timeout, interval time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}
