package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
)

// flakyListener fails its first n Accepts the way the kernel does when the process is out
// of descriptors, then behaves.
type flakyListener struct {
	net.Listener
	failures atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.failures.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestTCPListenerSurvivesAcceptErrors: mochi's own TCP listener returns for good on the first
// accept error; ours backs off and keeps accepting.
func TestTCPListenerSurvivesAcceptErrors(t *testing.T) {
	t.Parallel()
	l := newTCPListener("t", "127.0.0.1:0", time.Second)
	var flaky *flakyListener
	l.listen = func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		flaky = &flakyListener{Listener: ln}
		flaky.failures.Store(3)
		return flaky, nil
	}
	if err := l.Init(testLogger(t)); err != nil {
		t.Fatal(err)
	}
	established := make(chan string, 1)
	served := make(chan struct{})
	go func() {
		defer close(served)
		l.Serve(func(id string, c net.Conn) error {
			established <- id
			return nil
		})
	}()

	conn, err := net.DialTimeout("tcp", l.Address(), waitFor)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	select {
	case id := <-established:
		if id != "t" {
			t.Errorf("listener id %q", id)
		}
	case <-time.After(waitFor):
		t.Fatal("connection not established after accept errors")
	}
	if n := flaky.failures.Load(); n >= 0 {
		t.Fatalf("%d accept errors were never returned", n+1)
	}

	closed := make(chan struct{})
	go func() {
		l.Close(func(string) {})
		close(closed)
	}()
	for _, ch := range []chan struct{}{served, closed} {
		select {
		case <-ch:
		case <-time.After(waitFor):
			t.Fatal("Serve or Close did not return")
		}
	}
}

// TestRetryListenerCloseInterruptsBackoff: Close ends an Accept that is waiting out a backoff.
func TestRetryListenerCloseInterruptsBackoff(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	flaky := &flakyListener{Listener: ln}
	flaky.failures.Store(1 << 30)
	rl := newRetryListener(flaky, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() {
		_, err := rl.Accept()
		done <- err
	}()
	testutil.Eventually(t, waitFor, func() error {
		if flaky.failures.Load() > 1<<30-3 {
			return errors.New("accept not retried yet")
		}
		return nil
	})
	_ = rl.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Accept still blocked after Close")
	}
}

// TestConnectTimeout: a connection that never sends CONNECT is closed.
func TestConnectTimeout(t *testing.T) {
	t.Parallel()
	f := startBroker(t, func(c *Config) { c.ConnectTimeout = 200 * time.Millisecond })
	conn, err := net.DialTimeout("tcp", f.b.MQTTAddr(), waitFor)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(waitFor))
	buf := make([]byte, 1)
	var ne net.Error
	if _, err := conn.Read(buf); err == nil {
		t.Fatal("read a byte from a broker that should have hung up")
	} else if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("connection still open after the connect timeout")
	}
}

const emfileHelperEnv = "BROKER_TEST_EMFILE_HELPER"

// TestAcceptAfterEMFILE runs the real thing: a child process (descriptor limits are
// process-wide) runs the broker and uses up its descriptors; this process connects, so the
// broker's accept fails with EMFILE; the child frees its descriptors and this client must be
// admitted.
func TestAcceptAfterEMFILE(t *testing.T) {
	t.Parallel()
	if os.Getenv(emfileHelperEnv) == "1" {
		emfileHelper(t)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestAcceptAfterEMFILE$", "-test.v")
	cmd.Env = append(os.Environ(), emfileHelperEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	defer func() {
		_ = stdin.Close()
		if err := cmd.Wait(); err != nil && !t.Failed() {
			t.Errorf("child: %v", err)
		}
		if t.Failed() {
			t.Logf("child output:\n%s%s", out.String(), stderr.String())
		}
	}()

	var addr, tok string
	var conn net.Conn
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		out.WriteString(line + "\n")
		switch {
		case strings.HasPrefix(line, "ADDR "):
			addr = strings.TrimPrefix(line, "ADDR ")
		case strings.HasPrefix(line, "TOKEN "):
			tok = strings.TrimPrefix(line, "TOKEN ")
		case line == "EXHAUSTED":
			// The kernel completes the TCP handshake; the broker's accept fails.
			conn, err = net.DialTimeout("tcp", addr, waitFor)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := conn.Write(connectPacket(protocolV3, creds{vinA, vinA, tok}, nil)); err != nil {
				t.Fatal(err)
			}
		case line == "RELEASED":
			// The wait runs from here: on a loaded machine the child may take most of its
			// 10 s to see the accept error before it releases the descriptors.
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			code, err := readConnack(conn)
			if err != nil {
				t.Fatalf("after the broker had descriptors again: %v", err)
			}
			if code != connAccepted {
				t.Fatalf("CONNACK %#x", code)
			}
			return // success
		case strings.HasPrefix(line, "--- SKIP"):
			t.Skipf("child skipped: %s", out.String())
		case strings.HasPrefix(line, "--- FAIL"):
			t.Fatal("child failed")
		}
	}
	t.Fatal("child ended before the test did")
}

func emfileHelper(t *testing.T) {
	f := startBroker(t, nil)
	fmt.Println("ADDR " + f.b.MQTTAddr())
	fmt.Println("TOKEN " + f.token(t, vinA, protocol.RoleVehicle))

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	orig := lim
	lim.Cur = 256
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("cannot lower RLIMIT_NOFILE: %v", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig)

	var hog []*os.File
	release := func() {
		for _, h := range hog {
			h.Close()
		}
		hog = nil
	}
	defer release()
	for {
		h, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatalf("exhausting descriptors: %v", err)
			}
			break
		}
		hog = append(hog, h)
	}
	fmt.Println("EXHAUSTED")

	testutil.Eventually(t, 10*time.Second, func() error {
		if !f.logs.contains("accept failed; retrying") {
			return errors.New("no accept error yet")
		}
		return nil
	})
	release()
	fmt.Println("RELEASED")
	_, _ = io.Copy(io.Discard, os.Stdin) // serve until the parent is done
}

// TestCloseWhileClientsComeAndGo: closing the broker while clients connect and leave returns.
// mochi's own way of ending a listener's clients (Clients.GetByListener in v2.7.9) takes the
// clients' read lock twice, and a client arriving or leaving between the two hangs Close, and
// every later connection, for good (mochi-mqtt/server#488); a CI run of this package hung
// 20 minutes on it.
func TestCloseWhileClientsComeAndGo(t *testing.T) {
	t.Parallel()
	const rounds, churners = 30, 6
	for round := range rounds {
		f := startBroker(t, nil)
		addr := f.b.MQTTAddr()
		tokens := make([]creds, churners)
		for i := range tokens {
			tokens[i] = f.creds(t, benchVIN(i), protocol.RoleVehicle, "")
		}
		stop := make(chan struct{})
		var churning sync.WaitGroup
		for _, c := range tokens {
			churning.Add(1)
			go func() {
				defer churning.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := connectAndLeave(addr, c); err != nil {
						return // the broker is closing
					}
				}
			}()
		}
		time.Sleep(time.Duration(round%5) * time.Millisecond) // vary where Close lands
		closed := make(chan error, 1)
		go func() { closed <- f.b.Close() }()
		select {
		case <-closed:
		case <-time.After(4 * waitFor):
			// Not t.Fatal: the fixture's cleanup would wait on the hung Close for good. The
			// panic ends the test binary with every goroutine's stack.
			panic(fmt.Sprintf("round %d: broker Close still running after %v with clients coming and going", round, 4*waitFor))
		}
		close(stop)
		churning.Wait()
	}
}

// connectAndLeave opens an MQTT session with c, waits for its CONNACK and hangs up.
func connectAndLeave(addr string, c creds) error {
	conn, err := net.DialTimeout("tcp", addr, waitFor)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(waitFor))
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: c.clientID,
			UsernameFlag: true, Username: []byte(c.username), PasswordFlag: true, Password: []byte(c.password)}}
	if err := pk.ConnectEncode(&buf); err != nil {
		return err
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		return err
	}
	connack := make([]byte, 4)
	if _, err := io.ReadFull(conn, connack); err != nil {
		return err
	}
	if connack[0]>>4 != packets.Connack || connack[3] != 0 {
		return fmt.Errorf("connack % x", connack)
	}
	return nil
}
