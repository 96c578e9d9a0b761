package broker

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

const wsUpgrade = "GET /mqtt HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"

// TestWebSocketClosesUnauthenticatedSockets: whatever a client sends on a listener (a plain
// HTTP request, a WebSocket upgrade and then nothing, half a request, half a CONNECT, nothing
// at all), the broker closes the socket once the connect timeout has passed without a CONNECT.
// Before, a plain GET on the WebSocket port was answered 400 and the socket stayed open for
// good as an idle keep-alive connection.
func TestWebSocketClosesUnauthenticatedSockets(t *testing.T) {
	f := startBroker(t, func(c *Config) { c.ConnectTimeout = time.Second })
	cases := []struct {
		name       string
		addr       func() string
		send       string
		wantStatus string // the start of the HTTP answer, if any
	}{
		{"ws plain GET", f.b.WSAddr, "GET / HTTP/1.1\r\nHost: broker\r\n\r\n", "HTTP/1.1 400"},
		{"ws upgrade without CONNECT", f.b.WSAddr, wsUpgrade, "HTTP/1.1 101"},
		{"ws partial headers", f.b.WSAddr, "GET /mqtt HTTP/1.1\r\nHost: bro", ""},
		{"ws nothing", f.b.WSAddr, "", ""},
		{"tcp partial CONNECT", f.b.MQTTAddr, "\x10\x20\x00\x04MQTT", ""},
		{"tcp nothing", f.b.MQTTAddr, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			conn, err := net.DialTimeout("tcp", tc.addr(), waitFor)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if tc.send != "" {
				if _, err := io.WriteString(conn, tc.send); err != nil {
					t.Fatal(err)
				}
			}
			// Generous: the server must hang up long before this.
			_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
			r := bufio.NewReader(conn)
			if tc.wantStatus != "" {
				line, err := r.ReadString('\n')
				if err != nil {
					t.Fatalf("no HTTP answer: %v", err)
				}
				if !strings.HasPrefix(line, tc.wantStatus) {
					t.Fatalf("answer %q, want %s", line, tc.wantStatus)
				}
			}
			_, err = io.Copy(io.Discard, r)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the socket is still open: the broker never closed it")
			}
			// nil is EOF; a reset is a close too.
		})
	}
}
