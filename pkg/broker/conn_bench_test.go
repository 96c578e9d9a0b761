package broker

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
	"telematics/pkg/token"
)

// connHeapProfile, when set, is where BenchmarkIdleConnections writes a heap profile taken
// while its connections are up (go test's -memprofile is written after they are closed).
var connHeapProfile = flag.String("conn-heap-profile", "", "write a heap profile of the broker holding BenchmarkIdleConnections' cars to this file")

// benchVIN is the i-th VIN of a benchmark fleet (valid per ISO 3779).
func benchVIN(i int) string { return fmt.Sprintf("WVWZZZ1JZXW%06d", i) }

// BenchmarkIdleConnections measures what one connected, idle car costs the broker: heap and
// goroutine stacks per connection, after a GC, with the car's session as a real car makes it
// (CONNECT with its will, SUBSCRIBE to its cmd and keys topics, its retained online status).
// The cars' own sockets live in this process too; "tcp-only" is that share (both ends of a
// loopback TCP connection, nothing else), to subtract; "tls-only" the same over TLS, to
// subtract from the "tls" variant. Sizes are per MaxClientWritesPending,
// which sizes mochi's per-client outbound channel; "after-telemetry" has every car publish
// one message to an inline subscriber (as the embedded gateway is) before the measurement,
// which is where the reader goroutines' stacks grow; "connect-only" cars send CONNECT and
// nothing else (what verifying the token leaves on the reader's stack). grown-stack-B/conn is
// the stacks before the collections that halve them.
func BenchmarkIdleConnections(b *testing.B) {
	const cars = 500
	b.Run(fmt.Sprintf("tcp-only/cars=%d", cars), func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, cars)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- c
			}
		}()
		for b.Loop() {
			before := memNow()
			conns := make([]net.Conn, 0, 2*cars)
			for range cars {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				conns = append(conns, c, <-accepted)
			}
			reportPerConn(b, before, memNow(), cars)
			for _, c := range conns {
				_ = c.Close()
			}
		}
	})
	ca := localCA(b)
	clientTLS, err := tlsconf.ClientConfig(ca.CA)
	if err != nil {
		b.Fatal(err)
	}
	b.Run(fmt.Sprintf("tls-only/cars=%d", cars), func(b *testing.B) {
		certs, err := tlsconf.Load(ca.Files)
		if err != nil {
			b.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, cars)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					tc := tls.Server(c, certs.ServerConfig())
					_ = tc.Handshake()
					accepted <- tc
				}()
			}
		}()
		for b.Loop() {
			before := memNow()
			conns := make([]net.Conn, 0, 2*cars)
			for range cars {
				c, err := tls.Dial("tcp", ln.Addr().String(), clientTLS)
				if err != nil {
					b.Fatal(err)
				}
				conns = append(conns, c, <-accepted)
			}
			reportPerConn(b, before, memNow(), cars)
			for _, c := range conns {
				_ = c.Close()
			}
		}
	})
	// mochi with the project's listener and capabilities but none of its hooks (mochi's
	// allow-all hook instead): what mochi's own read path leaves on the stacks.
	b.Run(fmt.Sprintf("mochi-alone/writes-pending=128/cars=%d", cars), func(b *testing.B) {
		cfg := testConfig()
		cfg.MaxClientWritesPending = 128
		server := mqtt.New(&mqtt.Options{Capabilities: capabilities(cfg), ClientNetReadBufferSize: clientReadBufferBytes,
			InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
		must(b, server.AddHook(new(auth.AllowHook), nil)) // a benchmark only: admits anyone
		l := newTCPListener(ListenerTCP, "127.0.0.1:0", waitFor)
		must(b, server.AddListener(l))
		must(b, server.Serve())
		defer server.Close()
		for b.Loop() {
			before := memNow()
			conns := make([]net.Conn, 0, cars)
			for i := range cars {
				vin := benchVIN(i)
				conns = append(conns, connectCar(b, l.Address(), nil, creds{clientID: vin, username: vin, password: "unchecked"}, false))
			}
			reportPerConn(b, before, memNow(), cars)
			for _, c := range conns {
				_ = c.Close()
			}
			testutil.Eventually(b, waitFor, func() error {
				if n := server.Info.ClientsConnected; n != 0 {
					return fmt.Errorf("%d clients left", n)
				}
				return nil
			})
		}
	})
	type variant struct {
		pending     int
		telemetry   bool // each car publishes one telemetry message to an inline subscriber
		connectOnly bool // each car sends CONNECT and nothing else: what the token check leaves
		tls         bool // MQTT over TLS (the broker's TLS listener; subtract tls-only)
	}
	for _, v := range []variant{{128, false, false, false}, {128, false, true, false}, {128, false, false, true},
		{1024, false, false, false}, {8192, false, false, false}, {1024, true, false, false}} {
		name := fmt.Sprintf("writes-pending=%d/cars=%d", v.pending, cars)
		if v.telemetry {
			name += "/after-telemetry"
		}
		if v.connectOnly {
			name += "/connect-only"
		}
		if v.tls {
			name += "/tls"
		}
		b.Run(name, func(b *testing.B) {
			pending := v.pending
			var serverCA *tlsconf.LocalCA
			var carTLS *tls.Config
			if v.tls {
				serverCA, carTLS = &ca, clientTLS
			}
			f := startQuietBroker(b, pending, serverCA)
			addr := f.b.MQTTAddr()
			if v.tls {
				addr = f.b.TLSMQTTAddr()
			}
			if v.telemetry {
				// The gateway's subscriber: mochi calls it on the publisher's reader goroutine.
				var got atomic.Int64
				if err := f.b.Server().Subscribe("v/+/telemetry", 1, func(*mqtt.Client, packets.Subscription, packets.Packet) { got.Add(1) }); err != nil {
					b.Fatal(err)
				}
			}
			creds := make([]creds, cars)
			for i := range creds {
				creds[i] = f.creds(b, benchVIN(i), protocol.RoleVehicle, "")
			}
			for b.Loop() {
				before := memNow()
				conns := make([]net.Conn, 0, cars)
				for i := range cars {
					conns = append(conns, connectCar(b, addr, carTLS, creds[i], v.connectOnly))
				}
				if v.telemetry {
					for i, c := range conns {
						pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4,
							TopicName: "v/" + benchVIN(i) + "/telemetry", Payload: []byte(`{"v":1,"ts":1700000000000,"seq":1,"signals":{"Vehicle.Speed":50}}`)}
						var buf bytes.Buffer
						must(b, pk.PublishEncode(&buf))
						if _, err := c.Write(buf.Bytes()); err != nil {
							b.Fatal(err)
						}
					}
					// A PINGREQ answered means the broker has handled the publish before it.
					for _, c := range conns {
						if _, err := c.Write([]byte{packets.Pingreq << 4, 0}); err != nil {
							b.Fatal(err)
						}
						resp := make([]byte, 2)
						if _, err := io.ReadFull(c, resp); err != nil || resp[0]>>4 != packets.Pingresp {
							b.Fatalf("no PINGRESP: % x %v", resp, err)
						}
					}
				}
				testutil.Eventually(b, waitFor, func() error {
					if n := f.b.Auth().Sessions(); n != cars {
						return fmt.Errorf("%d of %d sessions", n, cars)
					}
					return nil
				})
				after := memNow()
				reportPerConn(b, before, after, cars)
				if *connHeapProfile != "" {
					writeHeapProfile(b, *connHeapProfile)
				}
				for _, c := range conns {
					_ = c.Close()
				}
				testutil.Eventually(b, waitFor, func() error {
					if n := f.b.Auth().Sessions(); n != 0 {
						return fmt.Errorf("%d sessions left", n)
					}
					return nil
				})
			}
		})
	}
}

// startQuietBroker is startBroker without the debug log (a test's log buffer would grow with
// every connection and be counted as the broker's memory); with ca, also MQTT over TLS with
// ca's server certificate.
func startQuietBroker(b *testing.B, writesPending int, ca *tlsconf.LocalCA) *fixture {
	signer, err := sign.Generate()
	if err != nil {
		b.Fatal(err)
	}
	cfg := testConfig()
	cfg.WSAddr = ""
	cfg.MaxClientWritesPending = writesPending
	if ca != nil {
		cfg.TLSMQTTAddr, cfg.TLSCert, cfg.TLSKey = "127.0.0.1:0", ca.Files.Cert, ca.Files.Key
	}
	clock := newTestClock()
	br, err := newBroker(cfg, []*ecdsa.PublicKey{signer.Public()}, slog.New(slog.DiscardHandler), clock)
	if err != nil {
		b.Fatal(err)
	}
	if err := br.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	return &fixture{b: br, signer: signer, issuer: token.NewIssuer(signer, clock), clock: clock}
}

type memSample struct {
	heap, stack uint64
	goroutines  int
	// grownStack is the stacks before the collections: as the connections' packets left them
	// (each collection halves a stack that uses under a quarter of it).
	grownStack uint64
	// startingStack is the size new goroutines start with (GODEBUG adaptivestackstart, on by
	// default: the average stack in use at the last collection plus a guard, rounded up to a
	// power of two). mochi's writer goroutine never grows past 8 KB: started at 8 KB, it keeps
	// it; started smaller, it is halved back to 4 KB.
	startingStack uint64
}

func memNow() memSample {
	var grown runtime.MemStats
	runtime.ReadMemStats(&grown)
	runtime.GC()
	runtime.GC() // the second cycle frees what the first one's finalizers released
	for range 4 {
		runtime.GC() // each cycle halves a stack that uses under a quarter of it
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	start := []metrics.Sample{{Name: "/gc/stack/starting-size:bytes"}}
	metrics.Read(start)
	return memSample{heap: m.HeapInuse, stack: m.StackInuse, goroutines: runtime.NumGoroutine(),
		grownStack: grown.StackInuse, startingStack: start[0].Value.Uint64()}
}

func reportPerConn(b *testing.B, before, after memSample, n int) {
	b.ReportMetric(float64(int64(after.heap)-int64(before.heap))/float64(n), "heap-B/conn")
	b.ReportMetric(float64(int64(after.stack)-int64(before.stack))/float64(n), "stack-B/conn")
	b.ReportMetric(float64(after.goroutines-before.goroutines)/float64(n), "goroutines/conn")
	b.ReportMetric(float64(int64(after.grownStack)-int64(before.stack))/float64(n), "grown-stack-B/conn")
	b.ReportMetric(float64(after.startingStack), "start-stack-B")
}

func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

// connectCar opens a car's session the way a car does and leaves it idle (keep-alive 0, so
// the broker never expects a ping): CONNECT with the offline will, SUBSCRIBE to v/VIN/cmd and
// v/VIN/keys, PUBLISH the retained online status at QoS 1. With connectOnly it sends the
// CONNECT alone. With tlsCfg it connects over TLS.
func connectCar(b *testing.B, addr string, tlsCfg *tls.Config, c creds, connectOnly bool) net.Conn {
	b.Helper()
	var conn net.Conn
	var err error
	if tlsCfg != nil {
		conn, err = tls.Dial("tcp", addr, tlsCfg)
	} else {
		conn, err = net.Dial("tcp", addr)
	}
	if err != nil {
		b.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(waitFor))
	status := func(s string) []byte { return []byte(`{"v":1,"status":"` + s + `","ts":1700000000000}`) }
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: c.clientID,
			UsernameFlag: true, Username: []byte(c.username), PasswordFlag: true, Password: []byte(c.password),
			WillFlag: true, WillTopic: "v/" + c.username + "/status", WillPayload: status("offline"), WillQos: 1, WillRetain: true}}
	must(b, pk.ConnectEncode(&buf))
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "v/" + c.username + "/cmd", Qos: 1}, {Filter: "v/" + c.username + "/keys", Qos: 1}}}
	must(b, sub.SubscribeEncode(&buf))
	pub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true}, ProtocolVersion: 4,
		PacketID: 2, TopicName: "v/" + c.username + "/status", Payload: status("online")}
	must(b, pub.PublishEncode(&buf))
	wants := []byte{packets.Connack, packets.Suback, packets.Puback}
	if connectOnly {
		buf.Reset()
		must(b, pk.ConnectEncode(&buf))
		wants = wants[:1]
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		b.Fatal(err)
	}
	r := bufio.NewReader(conn)
	for _, want := range wants {
		first, err := r.ReadByte()
		if err != nil {
			b.Fatalf("car %s: waiting for packet type %d: %v", c.clientID, want, err)
		}
		n, _, err := packets.DecodeLength(r)
		if err != nil {
			b.Fatal(err)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			b.Fatal(err)
		}
		if first>>4 != want || (want == packets.Connack && body[1] != 0) || (want == packets.Suback && bytes.Contains(body[2:], []byte{0x80})) {
			b.Fatalf("car %s: got packet type %d % x, want type %d accepted", c.clientID, first>>4, body, want)
		}
	}
	_ = conn.SetDeadline(time.Time{})
	return conn
}

func must(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}
