package broker

import (
	"crypto/tls"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/tlsconf"
)

// localCA makes a CA and a server certificate for localhost in a new directory.
func localCA(t testing.TB) tlsconf.LocalCA {
	t.Helper()
	ca, err := tlsconf.EnsureLocalCA(t.TempDir(), tlsconf.DefaultHosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// startTLSBroker is startBroker with MQTT over TLS and secure WebSocket on port 0, with a
// certificate of a new local CA.
func startTLSBroker(t testing.TB) (*fixture, tlsconf.LocalCA) {
	t.Helper()
	ca := localCA(t)
	f := startBroker(t, func(c *Config) {
		c.TLSMQTTAddr, c.TLSWSAddr = "127.0.0.1:0", "127.0.0.1:0"
		c.TLSCert, c.TLSKey = ca.Files.Cert, ca.Files.Key
	})
	if f.b.TLSMQTTAddr() == "" || f.b.TLSWSAddr() == "" {
		t.Fatal("TLS listeners not open")
	}
	return f, ca
}

func TestTLSListenersNeedACertificate(t *testing.T) {
	t.Parallel()
	f := startBroker(t, func(c *Config) { c.TLSMQTTAddr, c.TLSWSAddr = "127.0.0.1:0", "127.0.0.1:0" })
	if f.b.TLSMQTTAddr() != "" || f.b.TLSWSAddr() != "" {
		t.Fatalf("TLS listeners open without a certificate: %q %q", f.b.TLSMQTTAddr(), f.b.TLSWSAddr())
	}
}

func TestPlaintextOffLoopbackRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		mod   func(*Config)
		fails string // "" when the configuration is valid
	}{
		{"loopback", func(c *Config) {}, ""},
		{"mqtt on every interface", func(c *Config) { c.MQTTAddr = "0.0.0.0:1883" }, "mqtt_addr"},
		{"ws on a host name", func(c *Config) { c.WSAddr = "broker.example:1882" }, "ws_addr"},
		{"allowed", func(c *Config) { c.MQTTAddr, c.AllowPlaintext = ":1883", true }, ""},
		{"tls off loopback", func(c *Config) { c.TLSMQTTAddr = "0.0.0.0:8883" }, ""},
		{"key without cert", func(c *Config) { c.TLSKey = "k.pem" }, "tls_cert"},
		{"client ca without cert", func(c *Config) { c.ClientCA = "ca.pem" }, "client_ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mod(&cfg)
			err := cfg.Validate()
			switch {
			case tc.fails == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.fails != "" && (err == nil || !strings.Contains(err.Error(), tc.fails)):
				t.Fatalf("error %v does not name %s", err, tc.fails)
			case tc.fails == "mqtt_addr" || tc.fails == "ws_addr":
				if !errors.Is(err, tlsconf.ErrPlaintext) || !strings.Contains(err.Error(), "allow_plaintext") {
					t.Fatalf("the error does not say why and what to do: %v", err)
				}
			}
		})
	}
}

// MQTT over TLS and over secure WebSocket admit a car with its token and the same ACL; a
// client that does not trust the CA gets nowhere.
func TestTLSPahoGo(t *testing.T) {
	t.Parallel()
	f, ca := startTLSBroker(t)
	trust, err := tlsconf.ClientConfig(ca.CA)
	if err != nil {
		t.Fatal(err)
	}
	car := f.creds(t, vinA, protocol.RoleVehicle, "")
	for _, url := range []string{"ssl://" + f.b.TLSMQTTAddr(), "wss://" + f.b.TLSWSAddr() + "/mqtt"} {
		cl := mustPaho(t, url, car, func(o *paho.ClientOptions) { o.SetTLSConfig(trust) })
		if got := subscribe(t, cl, "v/"+vinA+"/cmd", func(paho.Client, paho.Message) {}); got != 1 {
			t.Errorf("%s: own topic granted %d", url, got)
		}
		if got := subscribe(t, cl, "v/"+vinB+"/cmd", func(paho.Client, paho.Message) {}); got != 0x80 {
			t.Errorf("%s: another car's topic granted %d", url, got)
		}
		cl.Disconnect(50)
		waitGone(t, f, vinA)

		stranger := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(vinA).
			SetUsername(car.username).SetPassword(car.password).SetAutoReconnect(false).
			SetConnectTimeout(5 * time.Second).SetTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
		tok := stranger.Connect()
		if !tok.WaitTimeout(waitFor) || tok.Error() == nil || !strings.Contains(tok.Error().Error(), "certificate") {
			t.Errorf("%s without the CA: %v", url, tok.Error())
		}
	}
}

func TestTLSMosquittoClients(t *testing.T) {
	t.Parallel()
	needTool(t, "/usr/bin/mosquitto_sub")
	needTool(t, "/usr/bin/mosquitto_pub")
	f, ca := startTLSBroker(t)
	other := localCA(t)
	car := f.creds(t, vinA, protocol.RoleVehicle, "")
	gw := mustPaho(t, f.tcpURL(), f.creds(t, gwSub, protocol.RoleGateway, ""), nil)
	var gwRec recorder
	subscribe(t, gw, "v/#", gwRec.handle)
	args := func(extra ...string) []string {
		return append(mosquittoArgs(t, f.b.TLSMQTTAddr(), car), extra...)
	}

	t.Run("own topic with the CA", func(t *testing.T) {
		if out, err := run(t, "/usr/bin/mosquitto_pub", args("--cafile", ca.CA, "-q", "1", "-t", "v/"+vinA+"/telemetry", "-m", "over-tls")...); err != nil {
			t.Fatalf("mosquitto_pub --cafile: %v\n%s", err, out)
		}
		testutil.Eventually(t, waitFor, func() error {
			if !gwRec.has("v/" + vinA + "/telemetry over-tls") {
				return errors.New("not delivered")
			}
			return nil
		})
	})
	t.Run("another car's topic with the CA", func(t *testing.T) {
		out, err := run(t, "/usr/bin/mosquitto_sub", args("--cafile", ca.CA, "-d", "-t", "v/"+vinB+"/cmd", "-C", "1", "-W", "3")...)
		if !strings.Contains(out, "Subscribed (mid: 1): 128") {
			t.Errorf("mosquitto_sub v/%s/cmd over TLS: %v\n%s", vinB, err, out)
		}
	})
	t.Run("another CA", func(t *testing.T) {
		out, err := run(t, "/usr/bin/mosquitto_pub", args("--cafile", other.CA, "-t", "v/"+vinA+"/telemetry", "-m", "x")...)
		if err == nil || !strings.Contains(out, "TLS error") {
			t.Errorf("mosquitto_pub trusting another CA: %v\n%s", err, out)
		}
	})
	t.Run("plain text to the TLS port", func(t *testing.T) {
		out, err := run(t, "/usr/bin/mosquitto_pub", args("-t", "v/"+vinA+"/telemetry", "-m", "plain")...)
		if err == nil {
			t.Errorf("mosquitto_pub without TLS was admitted:\n%s", out)
		}
	})
	// (mosquitto's --tls-version is a minimum, so TLS 1.1 is tested with openssl s_client.)
	if gwRec.has("v/" + vinA + "/telemetry plain") {
		t.Error("a refused client's message was delivered")
	}
}

// pahoServerTLSScript connects with python paho over TLS (tls_set with the CA file given) and
// subscribes to each filter, printing "suback FILTER CODE" or the TLS error. Arguments: host
// port cafile client_id username password filters…
const pahoServerTLSScript = `
import sys, ssl, threading
import paho.mqtt.client as mqtt

host, port, cafile, cid, user, password = sys.argv[1:7]
c = mqtt.Client(client_id=cid, protocol=mqtt.MQTTv311)
c.username_pw_set(user, password)
c.tls_set(ca_certs=cafile, tls_version=ssl.PROTOCOL_TLS_CLIENT)
connected, subscribed = threading.Event(), threading.Event()
result = {}
def on_connect(client, userdata, flags, rc, properties=None):
    result["connack"] = rc
    connected.set()
def on_subscribe(client, userdata, mid, granted, properties=None):
    result["suback"] = granted[0]
    subscribed.set()
c.on_connect, c.on_subscribe = on_connect, on_subscribe
try:
    c.connect(host, int(port), 30)
except ssl.SSLError as e:
    print("tls error", e.reason, flush=True); sys.exit(0)
c.loop_start()
if not connected.wait(5):
    print("connack timeout"); sys.exit(3)
print("connack", result["connack"], flush=True)
for f in sys.argv[7:]:
    subscribed.clear()
    c.subscribe(f, qos=1)
    if not subscribed.wait(5):
        print("suback timeout"); sys.exit(3)
    print("suback", f, result["suback"], flush=True)
c.disconnect()
c.loop_stop()
`

func TestTLSPythonPaho(t *testing.T) {
	t.Parallel()
	needPythonPaho(t)
	f, ca := startTLSBroker(t)
	other := localCA(t)
	car := f.creds(t, vinA, protocol.RoleVehicle, "")
	h, p := hostPort(t, f.b.TLSMQTTAddr())
	py := func(cafile string, filters ...string) string {
		out, err := run(t, "/usr/bin/python3", append([]string{"-c", pahoServerTLSScript, h, p, cafile, car.clientID, car.username, car.password}, filters...)...)
		if err != nil {
			t.Fatalf("python paho: %v\n%s", err, out)
		}
		return out
	}
	out := py(ca.CA, "v/"+vinA+"/cmd", "v/"+vinB+"/cmd")
	for _, want := range []string{"connack 0\n", "suback v/" + vinA + "/cmd 1\n", "suback v/" + vinB + "/cmd 128\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("python paho over TLS lacks %q:\n%s", want, out)
		}
	}
	if out := py(other.CA); !strings.Contains(out, "tls error CERTIFICATE_VERIFY_FAILED") {
		t.Errorf("python paho trusting another CA:\n%s", out)
	}
}

// openssl s_client: TLS 1.2 with the CA verifies; TLS 1.1 and a suite without AEAD are refused.
func TestTLSOpenSSLVersions(t *testing.T) {
	t.Parallel()
	needTool(t, "/usr/bin/openssl")
	f, ca := startTLSBroker(t)
	sclient := func(args ...string) (string, error) {
		return run(t, "/usr/bin/openssl", append([]string{"s_client", "-connect", f.b.TLSMQTTAddr(), "-CAfile", ca.CA,
			"-verify_return_error", "-servername", "localhost"}, args...)...)
	}
	out, err := sclient("-tls1_2")
	if err != nil || !strings.Contains(out, "Verify return code: 0 (ok)") || !strings.Contains(out, "Protocol  : TLSv1.2") || strings.Contains(out, "Cipher is (NONE)") {
		t.Errorf("TLS 1.2: %v\n%s", err, out)
	}
	// SECLEVEL=0 lets this openssl offer TLS 1.1 at all: the refusal must be the broker's.
	out, err = sclient("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
	if err == nil || !strings.Contains(out, "Cipher is (NONE)") {
		t.Errorf("TLS 1.1 was accepted:\n%s", out)
	}
	if !strings.Contains(out, "alert protocol version") {
		t.Errorf("TLS 1.1 failed for another reason than the version:\n%s", out)
	}
	out, err = sclient("-tls1_2", "-cipher", "AES128-SHA:@SECLEVEL=0")
	if err == nil || !strings.Contains(out, "Cipher is (NONE)") || !strings.Contains(out, "alert handshake failure") {
		t.Errorf("a CBC suite without forward secrecy was accepted:\n%s", out)
	}
}

// A reload serves the new certificate to new connections; an established one stays up.
func TestTLSReloadKeepsConnections(t *testing.T) {
	t.Parallel()
	f, ca := startTLSBroker(t)
	car := f.creds(t, vinA, protocol.RoleVehicle, "")
	trustOld, _ := tlsconf.ClientConfig(ca.CA)
	cl := mustPaho(t, "ssl://"+f.b.TLSMQTTAddr(), car, func(o *paho.ClientOptions) { o.SetTLSConfig(trustOld) })

	next := localCA(t) // another CA: the served certificate must change visibly
	for _, c := range [][2]string{{next.Files.Cert, ca.Files.Cert}, {next.Files.Key, ca.Files.Key}} {
		b, err := os.ReadFile(c[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.b.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	trustNew, _ := tlsconf.ClientConfig(next.CA)
	conn, err := tls.Dial("tcp", f.b.TLSMQTTAddr(), trustNew)
	if err != nil {
		t.Fatalf("the new certificate is not served: %v", err)
	}
	conn.Close()
	if _, err := tls.Dial("tcp", f.b.TLSMQTTAddr(), trustOld); err == nil {
		t.Error("the old certificate is still served")
	}
	publish(t, cl, "v/"+vinA+"/telemetry", 1, "after reload")
	if !cl.IsConnectionOpen() {
		t.Error("the established connection dropped")
	}

	// A broken file keeps the certificate in use.
	if err := os.WriteFile(ca.Files.Cert, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.b.ReloadTLS(); err == nil {
		t.Error("a broken certificate file was loaded")
	}
	if conn, err := tls.Dial("tcp", f.b.TLSMQTTAddr(), trustNew); err != nil {
		t.Errorf("after a failed reload: %v", err)
	} else {
		conn.Close()
	}
}
