package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/pkg/protocol"
)

// carConn is one simulated car's MQTT 3.1.1 session, as lean as a load generator must be: one
// socket, one reader goroutine, writes made by the car's own driver goroutine. It speaks the
// protocol a car speaks (docs/PROTOCOL.md): CONNECT with the retained "offline" will, SUBSCRIBE
// to its cmd and keys topics, the retained "online" status, telemetry at QoS 0 or 1. Rare
// packets are encoded with mochi's packet codec; PUBLISH, the hot one, by hand into a reused
// buffer.
//
// Why not pkg/mqttc: a paho client costs several goroutines, a token and channel hand-offs per
// publish; the bench must cost far less than what it measures, or it measures itself.
type carConn struct {
	vin            string
	telemetryTopic string
	conn           net.Conn
	stats          *loadCounters

	wmu sync.Mutex // one writer at a time: the driver, and the reader's PUBACKs

	// PUBACKs the reader could not write because a write was in progress; that writer sends
	// them. The reader never waits for the write lock: a writer blocked on a full socket waits
	// for the broker, which may wait for the reader.
	ackMu       sync.Mutex
	pendingAcks []byte

	// QoS 1 window: a slot is taken per unacknowledged publish and given back by its PUBACK.
	window chan struct{}
	sentAt []atomic.Int64 // unix ns of each slot's publish, for the PUBACK latency
	nextID uint16

	seq       uint64 // telemetry sequence number: rises by one per message, from 1
	lastWrite atomic.Int64
	closing   atomic.Bool
	dead      chan struct{} // closed when the reader ends
}

// carSendBuffer is a car socket's send buffer (SO_SNDBUF), in bytes.
const carSendBuffer = 64 << 10

// Packet identifiers below firstTelemetryID belong to the session setup.
const (
	subscribeID      = 1
	statusID         = 2
	firstTelemetryID = 16
)

// dialCar connects one car: dial (from source, if set; over TLS with tlsCfg), send CONNECT, SUBSCRIBE and the online
// status in one write (MQTT lets a client send before CONNACK), and wait for the CONNACK. It
// returns the time from dial to CONNACK. A refusal is errRefused.
func dialCar(ctx context.Context, addr string, source net.IP, tlsCfg *tls.Config, creds protocol.Credentials, keepAlive, timeout time.Duration,
	inflight int, stats *loadCounters) (*carConn, time.Duration, error) {
	d := net.Dialer{Timeout: timeout}
	if source != nil {
		d.LocalAddr = &net.TCPAddr{IP: source}
	}
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		// A car's socket holds little: with Linux's autotuned buffers (megabytes per loopback
		// connection) a fleet publishing "max" would first fill gigabytes of kernel buffers,
		// and the bench would measure that instead of the broker.
		_ = tc.SetWriteBuffer(carSendBuffer)
	}
	if tlsCfg != nil {
		// The handshake runs on the first write, within the deadline below: part of the time
		// to CONNACK, as it is for a real car.
		conn = tls.Client(conn, tlsCfg)
	}
	c := &carConn{
		vin:            creds.VIN,
		telemetryTopic: protocol.VehicleTopic(creds.VIN, protocol.SuffixTelemetry),
		conn:           conn,
		stats:          stats,
		window:         make(chan struct{}, inflight),
		sentAt:         make([]atomic.Int64, inflight),
		nextID:         firstTelemetryID,
		dead:           make(chan struct{}),
	}
	hello, err := sessionPackets(creds, keepAlive, start)
	if err != nil {
		conn.Close()
		return nil, 0, err
	}
	_ = conn.SetDeadline(start.Add(timeout))
	if _, err := conn.Write(hello); err != nil {
		conn.Close()
		return nil, 0, err
	}
	r := bufio.NewReaderSize(conn, 512)
	typ, body, err := readPacket(r)
	switch {
	case err != nil:
		conn.Close()
		return nil, 0, fmt.Errorf("waiting for CONNACK: %w", err)
	case typ != packets.Connack || len(body) < 2:
		conn.Close()
		return nil, 0, fmt.Errorf("first packet is type %d, not CONNACK", typ)
	case body[1] != 0:
		conn.Close()
		return nil, 0, fmt.Errorf("%w: CONNACK return code %d", errRefused, body[1])
	}
	took := time.Since(start)
	_ = conn.SetDeadline(time.Time{})
	c.lastWrite.Store(time.Now().UnixNano())
	go c.read(r)
	return c, took, nil
}

// errRefused is a CONNACK with a non-zero return code: the broker answered and said no.
var errRefused = errors.New("broker refused the car")

// sessionPackets encodes what a car sends on connecting.
func sessionPackets(creds protocol.Credentials, keepAlive time.Duration, now time.Time) ([]byte, error) {
	statusTopic := protocol.VehicleTopic(creds.VIN, protocol.SuffixStatus)
	var buf bytes.Buffer
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Keepalive: uint16(keepAlive / time.Second),
			// Clean false, as the cars of pkg/vehicle: the broker keeps the session.
			Clean:            false,
			ClientIdentifier: creds.ClientID,
			UsernameFlag:     true, Username: []byte(creds.Username),
			PasswordFlag: true, Password: []byte(creds.Token),
			WillFlag: true, WillTopic: statusTopic, WillPayload: statusPayload(protocol.StatusOffline, now),
			WillQos: 1, WillRetain: true,
		}}
	if err := connect.ConnectEncode(&buf); err != nil {
		return nil, err
	}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4,
		PacketID: subscribeID, Filters: packets.Subscriptions{
			{Filter: protocol.VehicleTopic(creds.VIN, protocol.SuffixCmd), Qos: 1},
			{Filter: protocol.VehicleTopic(creds.VIN, protocol.SuffixKeys), Qos: 1},
		}}
	if err := sub.SubscribeEncode(&buf); err != nil {
		return nil, err
	}
	out := appendPublish(buf.Bytes(), statusTopic, 1, true, statusID, statusPayload(protocol.StatusOnline, now))
	return out, nil
}

func statusPayload(status string, now time.Time) []byte {
	b := []byte(`{"v":1,"status":"` + status + `","ts":`)
	b = strconv.AppendInt(b, now.UnixMilli(), 10)
	return append(b, '}')
}

// appendPublish encodes an MQTT 3.1.1 PUBLISH.
func appendPublish(dst []byte, topic string, qos byte, retain bool, id uint16, payload []byte) []byte {
	header := byte(packets.Publish<<4) | qos<<1
	if retain {
		header |= 1
	}
	n := 2 + len(topic) + len(payload)
	if qos > 0 {
		n += 2
	}
	dst = append(dst, header)
	dst = appendLength(dst, n)
	dst = append(dst, byte(len(topic)>>8), byte(len(topic)))
	dst = append(dst, topic...)
	if qos > 0 {
		dst = append(dst, byte(id>>8), byte(id))
	}
	return append(dst, payload...)
}

// appendLength encodes MQTT's variable-length "remaining length".
func appendLength(dst []byte, n int) []byte {
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		dst = append(dst, b)
		if n == 0 {
			return dst
		}
	}
}

// readPacket reads one packet: its type and its body.
func readPacket(r *bufio.Reader) (byte, []byte, error) {
	first, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return 0, nil, err
	}
	if n > protocol.MaxPayloadBytes*4 {
		return 0, nil, fmt.Errorf("packet of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return first >> 4, body, nil
}

// read handles what the broker sends until the connection ends: PUBACKs free window slots,
// PUBLISHes (a command, a whitelist) are acknowledged, a refused subscription is counted.
func (c *carConn) read(r *bufio.Reader) {
	defer close(c.dead)
	for {
		first, err := r.ReadByte()
		if err != nil {
			c.lost(err)
			return
		}
		typ := first >> 4
		n, _, err := packets.DecodeLength(r)
		if err != nil {
			c.lost(err)
			return
		}
		if typ == packets.Puback && n == 2 {
			hi, _ := r.ReadByte()
			lo, err := r.ReadByte()
			if err != nil {
				c.lost(err)
				return
			}
			c.acked(uint16(hi)<<8 | uint16(lo))
			continue
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			c.lost(err)
			return
		}
		switch typ {
		case packets.Suback:
			if bytes.IndexByte(body[2:], 0x80) >= 0 {
				c.stats.subRefused.Add(1)
				c.stats.setError(fmt.Errorf("car %s: subscription to its cmd or keys topic refused", c.vin))
			}
		case packets.Publish:
			c.stats.received.Add(1)
			if qos := (first >> 1) & 3; qos > 0 && len(body) >= 2 {
				tl := int(body[0])<<8 | int(body[1])
				if len(body) >= 2+tl+2 {
					id := body[2+tl : 2+tl+2]
					c.ack([]byte{packets.Puback << 4, 2, id[0], id[1]})
				}
			}
		}
	}
}

func (c *carConn) lost(err error) {
	if c.closing.Load() {
		return
	}
	c.stats.dropped.Add(1)
	c.stats.connected.Add(-1)
	c.stats.setError(fmt.Errorf("car %s lost its connection: %w", c.vin, err))
}

// acked frees a telemetry publish's window slot and records its latency.
func (c *carConn) acked(id uint16) {
	if id < firstTelemetryID {
		return // the online status
	}
	slot := int(id-firstTelemetryID) % len(c.sentAt)
	if at := c.sentAt[slot].Swap(0); at != 0 {
		c.stats.ackLatency.record(time.Duration(time.Now().UnixNano() - at))
	}
	c.stats.acked.Add(1)
	select {
	case <-c.window:
	default:
	}
}

// takeID reserves a window slot for a QoS 1 publish and returns its packet id. wait says
// whether to wait while the window is full; ok is false if it is full (and wait is false) or
// the car or the run ended.
func (c *carConn) takeID(wait bool, stop <-chan struct{}) (id uint16, ok bool) {
	if wait {
		select {
		case c.window <- struct{}{}:
		case <-stop:
			return 0, false
		case <-c.dead:
			return 0, false
		}
	} else {
		select {
		case c.window <- struct{}{}:
		default:
			return 0, false
		}
	}
	id = c.nextID
	// Ids cycle through a multiple of the window size, so an id maps to the slot of the
	// publish it acknowledges while acknowledgements come in order (they do: a broker
	// acknowledges one connection's publishes in the order it reads them).
	span := uint16((65535 - firstTelemetryID) / len(c.sentAt) * len(c.sentAt))
	c.nextID = firstTelemetryID + (id-firstTelemetryID+1)%span
	c.sentAt[int(id-firstTelemetryID)%len(c.sentAt)].Store(time.Now().UnixNano())
	return id, true
}

// write sends bytes as one write, then the PUBACKs that came up meanwhile.
func (c *carConn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.conn.Write(b)
	if err == nil {
		c.lastWrite.Store(time.Now().UnixNano())
		err = c.flushAcks()
	}
	return err
}

// ack sends a PUBACK now if no write is in progress, else leaves it to the writer.
func (c *carConn) ack(puback []byte) {
	c.ackMu.Lock()
	c.pendingAcks = append(c.pendingAcks, puback...)
	c.ackMu.Unlock()
	if c.wmu.TryLock() {
		_ = c.flushAcks()
		c.wmu.Unlock()
	}
}

// flushAcks writes the pending PUBACKs; the caller holds wmu.
func (c *carConn) flushAcks() error {
	for {
		c.ackMu.Lock()
		acks := c.pendingAcks
		c.pendingAcks = nil
		c.ackMu.Unlock()
		if len(acks) == 0 {
			return nil
		}
		if _, err := c.conn.Write(acks); err != nil {
			return err
		}
	}
}

// close ends the session with a DISCONNECT (so the broker does not publish the will).
func (c *carConn) close() {
	if c.closing.Swap(true) {
		return
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = c.write([]byte{packets.Disconnect << 4, 0})
	_ = c.conn.Close()
	<-c.dead
}

// appendTelemetry encodes a protocol.Telemetry with the signals a simulated car reports, its
// values moving with seq, without reflection: the same bytes json.Marshal would make, at a
// fraction of the cost.
func appendTelemetry(dst []byte, tsMs int64, seq uint64) []byte {
	dst = append(dst, `{"v":1,"ts":`...)
	dst = strconv.AppendInt(dst, tsMs, 10)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	speed := float64(seq%1300) / 10
	dst = append(dst, `,"signals":{"`+protocol.VSSSpeed+`":`...)
	dst = strconv.AppendFloat(dst, speed, 'f', 1, 64)
	dst = append(dst, `,"`+protocol.VSSSoC+`":`...)
	dst = strconv.AppendFloat(dst, 80-float64(seq%600)/10, 'f', 1, 64)
	dst = append(dst, `,"`+protocol.VSSIsLocked+`":true,"`+protocol.VSSCharging+`":false,"`+
		protocol.VSSClimate+`":false,"`+protocol.VSSTrunkOpen+`":false,"`+protocol.VSSRunning+`":true,"Vehicle.TraveledDistance":`...)
	dst = strconv.AppendFloat(dst, 12000+float64(seq)/100, 'f', 1, 64)
	dst = append(dst, `,"`+protocol.VSSLatitude+`":`...)
	dst = strconv.AppendFloat(dst, 48.137154+float64(seq%1000)*1e-5, 'f', 6, 64)
	dst = append(dst, `,"`+protocol.VSSLongitude+`":`...)
	dst = strconv.AppendFloat(dst, 11.576124+float64(seq%1000)*1e-5, 'f', 6, 64)
	return append(dst, `}}`...)
}
