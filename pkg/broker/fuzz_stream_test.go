package broker

import (
	"bytes"
	"crypto/ecdsa"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
)

// FuzzMQTTStream sends arbitrary bytes, as the first bytes of a TCP connection, to a running
// broker (mochi's packet decoder, then the hooks): the broker never crashes, always ends the
// connection once the client stops sending, and accepts a CONNECT only with a token the
// gateway issued.
func FuzzMQTTStream(f *testing.F) {
	gw, err := sign.Generate()
	if err != nil {
		f.Fatal(err)
	}
	iss := token.NewIssuer(gw, nil)
	carTok, _, _ := iss.Issue(vinA, protocol.RoleVehicle, time.Hour)
	appTok, _, _ := iss.Issue(userX, protocol.RoleApp, time.Hour)
	connect := func(version byte, cid, user, pass, willTopic string) []byte {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: version,
			Connect: packets.ConnectParams{
				ProtocolName: []byte("MQTT"), ClientIdentifier: cid, Keepalive: 30, Clean: true,
				Username: []byte(user), UsernameFlag: user != "", Password: []byte(pass), PasswordFlag: pass != "",
				WillFlag: willTopic != "", WillTopic: willTopic, WillPayload: []byte(`{"v":1,"status":"offline"}`), WillQos: 1, WillRetain: true,
			},
		}
		var buf bytes.Buffer
		if err := pk.ConnectEncode(&buf); err != nil {
			f.Fatal(err)
		}
		return buf.Bytes()
	}
	publish := func(topic, payload string) []byte {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: topic, PacketID: 7, Payload: []byte(payload)}
		var buf bytes.Buffer
		if err := pk.PublishEncode(&buf); err != nil {
			f.Fatal(err)
		}
		return buf.Bytes()
	}
	car := connect(4, vinA, vinA, carTok, protocol.VehicleTopic(vinA, protocol.SuffixStatus))
	f.Add(car)
	f.Add(append(append([]byte(nil), car...), publish(protocol.VehicleTopic(vinA, protocol.SuffixTelemetry), `{"v":1,"ts":1,"signals":{}}`)...))
	f.Add(connect(5, userX+"-1", userX, appTok, ""))
	f.Add(connect(4, vinA, vinA, carTok, "v/"+vinB+"/status"))
	f.Add(connect(4, "x", "x", "not a token", ""))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte{0x10, 0xff, 0xff, 0xff, 0x7f})

	cfg := testConfig()
	cfg.WSAddr = ""
	b, err := newBroker(cfg, []*ecdsa.PublicKey{gw.Public()}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		f.Fatal(err)
	}
	if err := b.Start(); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { b.Close() })
	addr := b.MQTTAddr()
	tokens := [][]byte{[]byte(carTok), []byte(appTok)}
	f.Fuzz(func(t *testing.T, stream []byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("broker gone: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitFor))
		if _, err := c.Write(stream); err != nil {
			return // the broker closed early: it may
		}
		c.(*net.TCPConn).CloseWrite()
		// The broker must end the connection once the client's stream has ended (EOF, or a
		// reset when it closes with input unread); a timeout means it kept it open.
		out, err := io.ReadAll(c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("connection still open %s after the stream %q ended", waitFor, stream)
		}
		// A CONNACK that accepts (type 2, remaining length 2 or more, return code 0).
		if len(out) >= 4 && out[0] == 0x20 && out[3] == 0 {
			signed := false
			for _, tok := range tokens {
				signed = signed || bytes.Contains(stream, tok)
			}
			if !signed {
				t.Fatalf("CONNACK accepted %q without a token the gateway issued", stream)
			}
		}
	})
}
