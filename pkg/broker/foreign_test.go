package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
)

// Clients nobody in this project wrote: Debian's mosquitto clients and python3-paho-mqtt.
// CI installs them (mosquitto-clients, python3-paho-mqtt); elsewhere these tests skip.

const foreignTimeout = 10 * time.Second // bound of every external command

func needTool(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Skipf("%s not installed (Debian: apt-get install mosquitto-clients python3-paho-mqtt): %v", path, err)
	}
}

// needPythonPaho skips unless /usr/bin/python3 can import paho (the python3 on PATH may be
// another build without it).
func needPythonPaho(t *testing.T) {
	t.Helper()
	needTool(t, "/usr/bin/python3")
	ctx, cancel := context.WithTimeout(context.Background(), foreignTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "/usr/bin/python3", "-c", "import paho.mqtt.client").CombinedOutput(); err != nil {
		t.Skipf("python3-paho-mqtt not installed: %v %s", err, out)
	}
}

// run runs a command to completion, bounded by foreignTimeout.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), foreignTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s timed out:\n%s", name, out)
	}
	return string(out), err
}

// background starts a command; its combined output is in the returned buffer, and wait
// returns once it has exited (it is killed after foreignTimeout).
func background(t *testing.T, name string, args ...string) (out *logBuffer, wait func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), foreignTimeout)
	out = &logBuffer{}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); cancel() }()
	var result error
	waited := false
	wait = func() error {
		if !waited {
			result, waited = <-done, true
		}
		return result
	}
	t.Cleanup(func() { cancel(); _ = wait() })
	return out, wait
}

func hostPort(t *testing.T, addr string) (string, string) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// mosquittoArgs are the connection options of a mosquitto client with c's credentials.
func mosquittoArgs(t *testing.T, addr string, c creds) []string {
	h, p := hostPort(t, addr)
	args := []string{"-h", h, "-p", p, "-V", "mqttv311"}
	if c.clientID != "" {
		args = append(args, "-i", c.clientID)
	}
	if c.username != "" {
		args = append(args, "-u", c.username, "-P", c.password)
	}
	return args
}

func TestMosquittoClients(t *testing.T) {
	t.Parallel()
	needTool(t, "/usr/bin/mosquitto_sub")
	needTool(t, "/usr/bin/mosquitto_pub")
	f := startBroker(t, nil)
	car := f.creds(t, vinA, protocol.RoleVehicle, "")
	gw := mustPaho(t, f.tcpURL(), f.creds(t, gwSub, protocol.RoleGateway, ""), nil)
	var gwRec recorder
	subscribe(t, gw, "v/#", gwRec.handle)

	t.Run("no credentials", func(t *testing.T) {
		for _, tool := range []string{"/usr/bin/mosquitto_sub", "/usr/bin/mosquitto_pub"} {
			args := append(mosquittoArgs(t, f.b.MQTTAddr(), creds{clientID: vinA}), "-t", "v/"+vinA+"/cmd")
			if strings.HasSuffix(tool, "pub") {
				args = append(args, "-m", "x")
			} else {
				args = append(args, "-C", "1", "-W", "5")
			}
			out, err := run(t, tool, args...)
			if err == nil || !strings.Contains(out, "not authorised") {
				t.Errorf("%s without credentials: %v\n%s", filepath.Base(tool), err, out)
			}
		}
	})

	t.Run("wrong token", func(t *testing.T) {
		bad := creds{vinA, vinA, f.token(t, vinB, protocol.RoleVehicle)}
		out, err := run(t, "/usr/bin/mosquitto_pub", append(mosquittoArgs(t, f.b.MQTTAddr(), bad), "-t", "v/"+vinA+"/telemetry", "-m", "x")...)
		if err == nil || !strings.Contains(out, "not authorised") {
			t.Errorf("mosquitto_pub with another car's token: %v\n%s", err, out)
		}
	})

	t.Run("subscribe own cmd", func(t *testing.T) {
		out, wait := background(t, "/usr/bin/mosquitto_sub",
			append(mosquittoArgs(t, f.b.MQTTAddr(), car), "-d", "-q", "1", "-t", "v/"+vinA+"/cmd", "-C", "1", "-W", "8")...)
		// mosquitto_sub's stdout is block-buffered into a pipe: ask the broker instead.
		testutil.Eventually(t, waitFor, func() error {
			cl, ok := f.b.Server().Clients.Get(vinA)
			if !ok || cl.Closed() {
				return errors.New("mosquitto_sub not connected yet")
			}
			if _, ok := cl.State.Subscriptions.Get("v/" + vinA + "/cmd"); !ok {
				return errors.New("mosquitto_sub not subscribed yet")
			}
			return nil
		})
		publish(t, gw, "v/"+vinA+"/cmd", 1, "lock-by-gateway")
		if err := wait(); err != nil {
			t.Fatalf("mosquitto_sub: %v\n%s", err, out.String())
		}
		if !out.contains("lock-by-gateway") {
			t.Fatalf("mosquitto_sub did not print the command:\n%s", out.String())
		}
	})

	t.Run("subscribe other car's cmd", func(t *testing.T) {
		for _, filter := range []string{"v/" + vinB + "/cmd", "v/+/cmd", "#"} {
			out, err := run(t, "/usr/bin/mosquitto_sub",
				append(mosquittoArgs(t, f.b.MQTTAddr(), car), "-d", "-t", filter, "-C", "1", "-W", "3")...)
			// mosquitto_sub 2.0 exits 0 here, saying so.
			if !strings.Contains(out, "Subscribed (mid: 1): 128") || !strings.Contains(out, "All subscription requests were denied") {
				t.Errorf("mosquitto_sub %s: %v\n%s", filter, err, out)
			}
		}
	})

	t.Run("publish", func(t *testing.T) {
		for _, c := range []struct {
			topic string
			ok    bool
		}{
			{"v/" + vinB + "/telemetry", false},
			{"v/" + vinB + "/cmd", false},
			{"v/" + vinA + "/cmd", false},
			{"v/" + vinA + "/telemetry", true},
		} {
			payload := "mosquitto_pub " + c.topic
			if out, err := run(t, "/usr/bin/mosquitto_pub", append(mosquittoArgs(t, f.b.MQTTAddr(), car), "-t", c.topic, "-m", payload)...); err != nil {
				t.Fatalf("mosquitto_pub %s: %v\n%s", c.topic, err, out)
			}
			// mosquitto_pub sent PUBLISH then DISCONNECT; the broker handles them in order,
			// so once the session is gone the publish has been delivered or refused. A
			// sentinel then queues behind anything it delivered.
			waitGone(t, f, vinA)
			sentinel := "sentinel after " + c.topic
			publish(t, gw, "v/"+vinB+"/status", 1, sentinel)
			testutil.Eventually(t, waitFor, func() error {
				if !gwRec.has("v/" + vinB + "/status " + sentinel) {
					return errors.New("sentinel not delivered")
				}
				return nil
			})
			if got := gwRec.has(c.topic + " " + payload); got != c.ok {
				t.Errorf("mosquitto_pub with car A's credentials to %s: delivered=%v, want %v", c.topic, got, c.ok)
			}
		}
	})
}

// waitGone waits until the broker no longer has a connected client with this id.
func waitGone(t *testing.T, f *fixture, clientID string) {
	t.Helper()
	testutil.Eventually(t, waitFor, func() error {
		if cl, ok := f.b.Server().Clients.Get(clientID); ok && !cl.Closed() {
			return fmt.Errorf("client %s still connected", clientID)
		}
		return nil
	})
}

// pahoScript publishes and subscribes with python paho and prints what happened, one
// "key value" per line. Arguments: host port protocol(311|5) client_id username password,
// then actions "pub:TOPIC:PAYLOAD" or "sub:FILTER".
const pahoScript = `
import sys, threading
import paho.mqtt.client as mqtt

host, port, proto, cid, user, password = sys.argv[1:7]
actions = sys.argv[7:]
v5 = proto == "5"
c = mqtt.Client(client_id=cid, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
if user:
    c.username_pw_set(user, password)
connected, subscribed, published = threading.Event(), threading.Event(), threading.Event()
result = {}

def on_connect(client, userdata, flags, rc, properties=None):
    result["connack"] = rc.value if hasattr(rc, "value") else rc
    connected.set()

def on_subscribe(client, userdata, mid, granted, properties=None):
    result["suback"] = [g.value if hasattr(g, "value") else g for g in granted]
    subscribed.set()

def on_publish(client, userdata, mid):
    published.set()

c.on_connect, c.on_subscribe, c.on_publish = on_connect, on_subscribe, on_publish
c.connect(host, int(port), 30)
c.loop_start()
if not connected.wait(5):
    print("connack timeout"); sys.exit(3)
print("connack", result["connack"], flush=True)
if result["connack"] != 0:
    sys.exit(0)  # paho's network thread is a daemon; joining it would wait out its reconnect delay
for a in actions:
    kind, rest = a.split(":", 1)
    if kind == "pub":
        topic, payload = rest.split(":", 1)
        published.clear()
        c.publish(topic, payload, qos=0)
        if not published.wait(5):
            print("publish timeout"); sys.exit(3)
        print("published", topic, flush=True)
    elif kind == "sub":
        subscribed.clear()
        c.subscribe(rest, qos=1)
        if not subscribed.wait(5):
            print("suback timeout"); sys.exit(3)
        print("suback", rest, result["suback"][0], flush=True)
c.disconnect()
c.loop_stop()
`

func runPaho(t *testing.T, addr, proto string, c creds, actions ...string) string {
	t.Helper()
	h, p := hostPort(t, addr)
	args := append([]string{"-c", pahoScript, h, p, proto, c.clientID, c.username, c.password}, actions...)
	out, err := run(t, "/usr/bin/python3", args...)
	if err != nil {
		t.Fatalf("python paho: %v\n%s", err, out)
	}
	return out
}

func TestPythonPaho(t *testing.T) {
	t.Parallel()
	needPythonPaho(t)
	f := startBroker(t, nil)
	car := f.creds(t, vinA, protocol.RoleVehicle, "")
	gw := mustPaho(t, f.tcpURL(), f.creds(t, gwSub, protocol.RoleGateway, ""), nil)
	var gwRec recorder
	subscribe(t, gw, "v/#", gwRec.handle)

	t.Run("no credentials", func(t *testing.T) {
		if out := runPaho(t, f.b.MQTTAddr(), "311", creds{clientID: vinA}); !strings.Contains(out, "connack 5\n") {
			t.Errorf("MQTT 3.1.1 without credentials:\n%s", out)
		}
		if out := runPaho(t, f.b.MQTTAddr(), "5", creds{clientID: vinA}); !strings.Contains(out, "connack 135\n") {
			t.Errorf("MQTT 5 without credentials:\n%s", out)
		}
	})

	for _, proto := range []string{"311", "5"} {
		t.Run("car credentials MQTT "+proto, func(t *testing.T) {
			forged, real := "forged-"+proto, "real-"+proto
			out := runPaho(t, f.b.MQTTAddr(), proto, car,
				"sub:v/"+vinB+"/cmd", "sub:v/#", "sub:v/"+vinA+"/cmd",
				"pub:v/"+vinB+"/telemetry:"+forged, "pub:v/"+vinA+"/cmd:"+forged, "pub:v/"+vinA+"/telemetry:"+real)
			refused := "128" // MQTT 3.1.1 SUBACK failure
			if proto == "5" {
				refused = "135" // MQTT 5 "not authorized"
			}
			for _, want := range []string{
				"connack 0\n",
				"suback v/" + vinB + "/cmd " + refused + "\n", "suback v/# " + refused + "\n", "suback v/" + vinA + "/cmd 1\n",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("python paho output lacks %q:\n%s", want, out)
				}
			}
			// The allowed publish came last on the same connection.
			testutil.Eventually(t, waitFor, func() error {
				if !gwRec.has("v/" + vinA + "/telemetry " + real) {
					return errors.New("allowed telemetry not delivered")
				}
				return nil
			})
			for _, m := range gwRec.all() {
				if strings.HasSuffix(m, " "+forged) {
					t.Errorf("refused publish delivered: %s", m)
				}
			}
		})
	}
}
