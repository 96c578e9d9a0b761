package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"telematics/internal/etcdrun"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
)

// Broker modes: what the bench starts as the system under test.
const (
	ModeEmbedded   = "embedded"   // `gateway serve`: the gateway with its embedded broker, one process
	ModeStandalone = "standalone" // the `broker` binary, and the gateway on --external-broker
	ModeMosquitto  = "mosquitto"  // Debian's mosquitto, and the gateway on --external-broker
	ModeTarget     = "target"     // nothing started: --broker URL, --gateway URL, --token-file
	// tlsSuffix marks a mode whose cars connect over TLS ("embedded+tls"): the broker listens
	// with TLS only.
	tlsSuffix = "+tls"
)

// provisionBatch is how many cars one admin API request asks for.
const provisionBatch = 5000

// binaries are the programs the bench runs as the system under test.
type binaries struct{ gateway, broker string }

// buildBinaries builds (once per invocation) what the modes need, unless given.
func buildBinaries(ctx context.Context, cfg Config, dir string, modes []string, progress io.Writer) (binaries, error) {
	bins := binaries{gateway: cfg.GatewayBin, broker: cfg.BrokerBin}
	needBroker := false
	for _, m := range modes {
		needBroker = needBroker || strings.TrimSuffix(m, tlsSuffix) == ModeStandalone || m == ModeCluster
	}
	var todo []string
	if bins.gateway == "" && len(modes) > 0 && modes[0] != ModeTarget {
		todo = append(todo, "gateway")
	}
	if bins.broker == "" && needBroker {
		todo = append(todo, "broker")
	}
	if len(todo) == 0 {
		return bins, nil
	}
	src := cfg.Src
	if src == "" {
		wd, err := os.Getwd()
		if err != nil {
			return bins, err
		}
		if src, err = findModuleRoot(wd); err != nil {
			return bins, err
		}
	}
	for _, name := range todo {
		out := filepath.Join(dir, name)
		fmt.Fprintf(progress, "building %s (go build -o %s ./%s)\n", name, out, name)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./"+name)
		cmd.Dir = src
		if b, err := cmd.CombinedOutput(); err != nil {
			return bins, fmt.Errorf("go build ./%s in %s: %w\n%s", name, src, err, b)
		}
		if name == "gateway" {
			bins.gateway = out
		} else {
			bins.broker = out
		}
	}
	return bins, nil
}

// findModuleRoot finds the directory of the telematics module's go.mod at or above dir.
func findModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("module telematics")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no telematics go.mod at or above %s: run the bench from the repository, or pass --src DIR or --gateway-bin FILE", dir)
		}
	}
}

// sutProc is one process of the system under test, measured through /proc.
type sutProc struct {
	role          string // what the tables call it: gateway+broker, broker, gateway, mosquitto
	holdsBroker   bool
	holdsGateway  bool
	pid           int
	cmd           *exec.Cmd // nil for a process the bench did not start (--gateway-pid)
	logPath       string
	exited        chan struct{}
	exitErr       error
	stopSignalled bool
}

// startProc starts a process with its output in dir/role.log; it dies with the bench.
func startProc(dir, role string, env []string, name string, args ...string) (*sutProc, error) {
	logPath := filepath.Join(dir, strings.ReplaceAll(role, "+", "-")+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// If the bench dies, so does what it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &sutProc{role: role, pid: cmd.Process.Pid, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.exitErr = cmd.Wait()
		logFile.Close()
		close(p.exited)
	}()
	return p, nil
}

func (p *sutProc) alive() bool {
	if p.cmd == nil {
		return syscall.Kill(p.pid, 0) == nil
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// deadError says that the process ended, with the end of its log.
func (p *sutProc) deadError() error {
	return fmt.Errorf("%s (pid %d) exited: %v; its log ends:\n%s", p.role, p.pid, p.exitErr, tail(p.logPath, 15))
}

// stop sends SIGTERM and waits (SIGKILL after timeout).
func (p *sutProc) stop(timeout time.Duration) error {
	if p.cmd == nil {
		return nil
	}
	p.stopSignalled = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s did not stop within %s after SIGTERM; killed", p.role, timeout)
	}
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}

// sut is the system under test: the processes the bench started (or was pointed at) and how
// to reach the gateway.
type sut struct {
	mode       string
	dir        string // temporary directory: data, configs, logs
	keepDir    bool
	gatewayURL string
	mqttAddr   string // host:port the cars dial
	caPEM      string // with TLS: the CA the cars verify the broker with
	token      string // admin token
	procs      []*sutProc
	mosq       *mosquittoConf

	// ModeCluster: the gateway replicas, etcd and its log, the binaries to start a replica again.
	replicas []*replica
	etcd     *etcdrun.Cluster
	etcdLog  *os.File
	bins     binaries
}

// startSUT starts the system under test for mode (or describes the target).
func startSUT(ctx context.Context, cfg Config, mode string, bins binaries, progress io.Writer) (_ *sut, err error) {
	s := &sut{mode: mode, keepDir: cfg.KeepDir, bins: bins}
	if mode == ModeTarget {
		return targetSUT(cfg, s)
	}
	if s.dir, err = os.MkdirTemp("", "vehicle-sim-bench-"+mode+"-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	data := filepath.Join(s.dir, "gateway-data")
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	if s.mqttAddr, err = freeAddr(); err != nil {
		return nil, err
	}
	s.gatewayURL = "http://" + httpAddr
	gwEnv := []string{"GATEWAY_TWOFA_MODE=off", "GATEWAY_LOG_LEVEL=warn"}
	if keyScenario(cfg.Scenario) {
		// Owners enroll TOTP as the product expects (the default mode), and the per-user rate
		// limit (120 per minute, burst 30) is off: the bench's owners send far more than a person.
		gwEnv = []string{"GATEWAY_TWOFA_MODE=enrolled", "GATEWAY_RATE_PER_MINUTE=0", "GATEWAY_LOG_LEVEL=warn"}
	}
	gwEnv = append(gwEnv, cfg.GatewayEnv...) // the last value of a variable wins
	gwArgs := []string{"serve", "--init", "--data", data, "--http-addr", httpAddr, "--ws-addr", "off", "--tls-ws-addr", "off", "--tls-http-addr", "off"}
	base, useTLS := strings.CutSuffix(mode, tlsSuffix)
	// With TLS the standalone broker and mosquitto get a certificate of a CA the bench makes
	// (the gateway makes its own); the gateway verifies them with it.
	var ca tlsconf.LocalCA
	if useTLS && base != ModeEmbedded {
		if ca, err = tlsconf.EnsureLocalCA(filepath.Join(s.dir, "tls"), tlsconf.DefaultHosts, time.Now()); err != nil {
			return nil, err
		}
		pem, err := os.ReadFile(ca.CA)
		if err != nil {
			return nil, err
		}
		s.caPEM = string(pem)
		gwEnv = append(gwEnv, "GATEWAY_EXTERNAL_BROKER_CA_FILE="+ca.CA)
	}
	brokerURL := "tcp://" + s.mqttAddr
	if useTLS {
		brokerURL = "ssl://" + s.mqttAddr
	}

	switch base {
	case ModeEmbedded:
		if useTLS {
			gwArgs = append(gwArgs, "--mqtt-addr", "off", "--tls-mqtt-addr", s.mqttAddr)
		} else {
			gwArgs = append(gwArgs, "--mqtt-addr", s.mqttAddr, "--tls-mqtt-addr", "off")
		}
		gw, err := startProc(s.dir, "gateway+broker", gwEnv, bins.gateway, gwArgs...)
		if err != nil {
			return nil, err
		}
		gw.holdsBroker, gw.holdsGateway = true, true
		s.procs = append(s.procs, gw)

	case ModeStandalone:
		// The broker needs the gateway's public key before the gateway runs: make the key the
		// gateway will load.
		signer, _, err := sign.LoadOrCreate(filepath.Join(data, "gateway.key"))
		if err != nil {
			return nil, err
		}
		pemPub, err := sign.PublicPEM(signer.Public())
		if err != nil {
			return nil, err
		}
		pubPath := filepath.Join(data, "gateway.pub")
		if err := os.WriteFile(pubPath, pemPub, 0o644); err != nil {
			return nil, err
		}
		brArgs := []string{"--gateway-pubkey", pubPath, "--mqtt-addr", s.mqttAddr, "--ws-addr", "off", "--tls-mqtt-addr", "off", "--tls-ws-addr", "off"}
		if useTLS {
			brArgs = []string{"--gateway-pubkey", pubPath, "--mqtt-addr", "off", "--ws-addr", "off", "--tls-mqtt-addr", s.mqttAddr, "--tls-ws-addr", "off",
				"--tls-cert", ca.Files.Cert, "--tls-key", ca.Files.Key}
		}
		br, err := startProc(s.dir, "broker", nil, bins.broker, brArgs...)
		if err != nil {
			return nil, err
		}
		br.holdsBroker = true
		s.procs = append(s.procs, br)
		if err := waitListening(ctx, br, s.mqttAddr); err != nil {
			return nil, err
		}
		gw, err := startProc(s.dir, "gateway", gwEnv, bins.gateway, append(gwArgs, "--tls-mqtt-addr", "off", "--external-broker", brokerURL)...)
		if err != nil {
			return nil, err
		}
		gw.holdsGateway = true
		s.procs = append(s.procs, gw)

	case ModeMosquitto:
		var mosqTLS *tlsconf.LocalCA
		if useTLS {
			mosqTLS = &ca
		}
		if s.mosq, err = newMosquittoConf(s.dir, s.mqttAddr, cfg.MosquittoBin, mosqTLS); err != nil {
			return nil, err
		}
		mq, err := startProc(s.dir, "mosquitto", nil, cfg.MosquittoBin, "-c", s.mosq.confPath)
		if err != nil {
			return nil, err
		}
		mq.holdsBroker = true
		s.procs = append(s.procs, mq)
		s.mosq.proc = mq
		if err := waitListening(ctx, mq, s.mqttAddr); err != nil {
			return nil, err
		}
		env := append(gwEnv, "GATEWAY_EXTERNAL_BROKER_PASSWORD="+s.mosq.gatewayPassword)
		gw, err := startProc(s.dir, "gateway", env, bins.gateway, append(gwArgs, "--tls-mqtt-addr", "off", "--external-broker", brokerURL)...)
		if err != nil {
			return nil, err
		}
		gw.holdsGateway = true
		s.procs = append(s.procs, gw)

	case ModeCluster:
		if err := s.startCluster(ctx, cfg, bins, gwEnv, progress); err != nil {
			return nil, err
		}

	default:
		return nil, fmt.Errorf("unknown broker mode %q", mode)
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		return nil, fmt.Errorf("read the gateway's admin token: %w", err)
	}
	s.token = strings.TrimSpace(string(tok))
	if useTLS && base == ModeEmbedded {
		pem, err := os.ReadFile(filepath.Join(data, tlsconf.CAFile))
		if err != nil {
			return nil, fmt.Errorf("read the gateway's CA certificate: %w", err)
		}
		s.caPEM = string(pem)
	}
	return s, nil
}

// targetSUT points the bench at a running system.
func targetSUT(cfg Config, s *sut) (*sut, error) {
	u, err := url.Parse(cfg.Broker)
	if err != nil || u.Host == "" || u.Scheme != "tcp" {
		return nil, fmt.Errorf("--broker %q: want embedded, standalone, mosquitto or tcp://HOST:PORT", cfg.Broker)
	}
	s.mqttAddr, s.gatewayURL = u.Host, strings.TrimRight(cfg.Gateway, "/")
	tok, err := os.ReadFile(cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("read the gateway admin token: %w (pass --token-file; it is DATA/admin.token)", err)
	}
	s.token = strings.TrimSpace(string(tok))
	add := func(pid int, role string, broker, gateway bool) {
		if pid > 0 {
			s.procs = append(s.procs, &sutProc{role: role, pid: pid, holdsBroker: broker, holdsGateway: gateway})
		}
	}
	if cfg.GatewayPID > 0 && cfg.GatewayPID == cfg.BrokerPID {
		add(cfg.GatewayPID, "gateway+broker", true, true)
	} else {
		add(cfg.BrokerPID, "broker", true, false)
		add(cfg.GatewayPID, "gateway", false, true)
	}
	return s, nil
}

// freeAddr returns a loopback address with a port nobody listens on right now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitListening waits until addr accepts connections (or p exits).
func waitListening(ctx context.Context, p *sutProc, addr string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if !p.alive() {
			return p.deadError()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s did not listen on %s within 30s: %v", p.role, addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitReady waits until the gateway answers /readyz (it is connected to its broker).
func (s *sut) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	gw := api.NewClient(s.gatewayURL, "")
	for {
		err := gw.Ready(ctx)
		if err == nil {
			return nil
		}
		for _, p := range s.procs {
			if !p.alive() {
				return p.deadError()
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("gateway not ready at %s within 60s: %v", s.gatewayURL, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkAlive reports the first process of the system under test that has ended.
func (s *sut) checkAlive() error {
	for _, p := range s.procs {
		if !p.alive() {
			if p.cmd == nil {
				return fmt.Errorf("%s (pid %d) is gone", p.role, p.pid)
			}
			return p.deadError()
		}
	}
	return nil
}

// close stops the processes in reverse order of start and removes the directory.
func (s *sut) close() error {
	var errs []error
	for i := len(s.procs) - 1; i >= 0; i-- {
		errs = append(errs, s.procs[i].stop(15*time.Second))
	}
	if s.etcd != nil {
		errs = append(errs, s.etcd.Close())
		s.etcd = nil
	}
	if s.etcdLog != nil {
		s.etcdLog.Close()
		s.etcdLog = nil
	}
	if s.dir != "" && !s.keepDir {
		errs = append(errs, os.RemoveAll(s.dir))
	}
	return errors.Join(errs...)
}

// provision asks the gateway for n new cars, in batches.
func (s *sut) provision(ctx context.Context, n int, progress func(done int)) ([]protocol.Credentials, error) {
	creds := make([]protocol.Credentials, 0, n)
	for len(creds) < n {
		k := min(n-len(creds), provisionBatch)
		got, err := s.admin().AddVehicles(ctx, api.AddVehiclesRequest{Count: k})
		if err != nil {
			return nil, fmt.Errorf("provision cars: %w", err)
		}
		if len(got) != k {
			return nil, fmt.Errorf("provision cars: asked for %d, got %d", k, len(got))
		}
		creds = append(creds, got...)
		if progress != nil {
			progress(len(creds))
		}
	}
	return creds, nil
}

func (s *sut) stats(ctx context.Context) (api.Stats, error) { return s.admin().Stats(ctx) }

// admin is the gateway's admin API.
func (s *sut) admin() *api.Client { return api.NewClient(s.gatewayURL, s.token) }

// sample reads memory and CPU of every process of the system under test.
func (s *sut) sample() ([]procSample, error) {
	out := make([]procSample, len(s.procs))
	for i, p := range s.procs {
		var err error
		if out[i], err = readProc(p.pid); err != nil {
			return nil, fmt.Errorf("%s: %w", p.role, err)
		}
	}
	return out, nil
}
