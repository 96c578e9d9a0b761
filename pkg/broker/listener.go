package broker

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Accept backoff after an error such as EMFILE (out of file descriptors): the same bounds as
// net/http's server.
const (
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// retryListener is a net.Listener whose Accept survives errors: it logs, backs off and tries
// again, so a broker out of descriptors accepts again once some are free. mochi's own TCP
// listener stops for good on its first accept error. Accept returns an error only once the
// listener is closed.
type retryListener struct {
	net.Listener
	log       *slog.Logger
	done      chan struct{}
	closeOnce sync.Once
}

func newRetryListener(ln net.Listener, log *slog.Logger) *retryListener {
	return &retryListener{Listener: ln, log: log, done: make(chan struct{})}
}

func (l *retryListener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		conn, err := l.Listener.Accept()
		if err == nil {
			return conn, nil
		}
		select {
		case <-l.done:
			return nil, net.ErrClosed
		default:
		}
		if errors.Is(err, net.ErrClosed) {
			l.log.Error("listener closed unexpectedly", "addr", l.Addr().String(), "error", err)
			return nil, err
		}
		backoff = min(max(2*backoff, minAcceptBackoff), maxAcceptBackoff)
		l.log.Warn("accept failed; retrying", "addr", l.Addr().String(), "error", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-l.done:
			t.Stop()
			return nil, net.ErrClosed
		case <-t.C:
		}
	}
}

func (l *retryListener) Close() error {
	err := net.ErrClosed
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}

// connSet tracks the connections a listener has handed to mochi and the goroutines serving
// them, so that Close can end connections mochi does not know yet (still before CONNECT) and
// wait for every goroutine.
type connSet struct {
	mu      sync.Mutex
	closing bool
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

// add registers a goroutine (and conn, if not nil); false once the set is closing.
func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if c != nil {
		if s.conns == nil {
			s.conns = map[net.Conn]struct{}{}
		}
		s.conns[c] = struct{}{}
	}
	s.wg.Add(1)
	return true
}

func (s *connSet) done(c net.Conn) {
	if c != nil {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.Close()
	}
	s.wg.Done()
}

// close closes every tracked connection and waits for every goroutine.
func (s *connSet) close() {
	s.mu.Lock()
	s.closing = true
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// tcpListener is a mochi listeners.Listener for MQTT over TCP built on retryListener. Go
// enables TCP keepalive on accepted connections, which finds dead peers of clients that
// asked for no MQTT keepalive.
type tcpListener struct {
	id             string
	addr           string
	connectTimeout time.Duration
	listen         func(network, addr string) (net.Listener, error)
	// tls, when set, makes this MQTT over TLS: the handshake runs on mochi's first read,
	// within the connect timeout.
	tls *tls.Config

	log   *slog.Logger
	ln    *retryListener
	conns connSet
	// disconnect, when set, ends this listener's clients in place of mochi's CloseFn (see
	// disconnectListenerClients).
	disconnect func(listenerID string)
}

var _ listeners.Listener = (*tcpListener)(nil)

func newTCPListener(id, addr string, connectTimeout time.Duration) *tcpListener {
	return &tcpListener{id: id, addr: addr, connectTimeout: connectTimeout, listen: net.Listen}
}

func (l *tcpListener) ID() string { return l.id }
func (l *tcpListener) Protocol() string {
	if l.tls != nil {
		return "tls"
	}
	return "tcp"
}

// Address is the bound address once Init has run.
func (l *tcpListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

// Init binds the address.
func (l *tcpListener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := l.listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.ln = newRetryListener(ln, log)
	return nil
}

// Serve accepts connections until Close and hands each to mochi on its own goroutine.
func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	if !l.conns.add(nil) {
		return
	}
	defer l.conns.done(nil)
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return // closed
		}
		if l.tls != nil {
			conn = tls.Server(conn, l.tls)
		}
		if !l.conns.add(conn) {
			_ = conn.Close()
			return
		}
		go func() {
			defer l.conns.done(conn)
			// mochi reads CONNECT without a deadline; ours bounds it, and mochi replaces it
			// with the keepalive deadline once the client is admitted.
			_ = conn.SetDeadline(time.Now().Add(l.connectTimeout))
			if err := establish(l.id, conn); err != nil {
				l.log.Debug("mqtt connection ended", "remote", conn.RemoteAddr().String(), "error", err)
			}
		}()
	}
}

// Close stops accepting, disconnects this listener's clients and waits for their goroutines.
func (l *tcpListener) Close(closeClients listeners.CloseFn) {
	if l.ln != nil {
		_ = l.ln.Close()
	}
	endClients(l.disconnect, closeClients, l.id)
	l.conns.close()
}

// wsListener is a mochi listeners.Listener for MQTT over WebSocket (subprotocol "mqtt").
// mochi's own does not report the address it bound, which tests on port 0 need.
type wsListener struct {
	id             string
	addr           string
	connectTimeout time.Duration
	readLimit      int64
	// tls, when set, makes this MQTT over secure WebSocket (wss).
	tls *tls.Config

	log       *slog.Logger
	ln        *retryListener
	srv       *http.Server
	upgrader  websocket.Upgrader
	establish listeners.EstablishFn
	conns     connSet
	// disconnect: as tcpListener's.
	disconnect func(listenerID string)
}

var _ listeners.Listener = (*wsListener)(nil)

func newWSListener(id, addr string, connectTimeout time.Duration, maxPacketBytes int) *wsListener {
	return &wsListener{
		id:             id,
		addr:           addr,
		connectTimeout: connectTimeout,
		// A WebSocket message may carry several MQTT packets; mochi bounds each packet.
		readLimit: int64(4 * maxPacketBytes),
		upgrader: websocket.Upgrader{
			Subprotocols:     []string{"mqtt"},
			HandshakeTimeout: connectTimeout,
			// Any origin: clients authenticate with a token inside CONNECT, never with
			// cookies a browser would attach for a foreign page.
			CheckOrigin: func(*http.Request) bool { return true },
		},
	}
}

func (l *wsListener) ID() string { return l.id }
func (l *wsListener) Protocol() string {
	if l.tls != nil {
		return "wss"
	}
	return "ws"
}

// Address is the bound address once Init has run.
func (l *wsListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

// Init binds the address.
func (l *wsListener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.ln = newRetryListener(ln, log)
	l.srv = &http.Server{
		Handler:           http.HandlerFunc(l.handle),
		ReadHeaderTimeout: l.connectTimeout,
		ReadTimeout:       l.connectTimeout,
		WriteTimeout:      l.connectTimeout,
		IdleTimeout:       l.connectTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	// One request per connection: a request that is not an upgrade (answered 400) ends it,
	// instead of leaving an idle keep-alive socket that never authenticates.
	l.srv.SetKeepAlivesEnabled(false)
	return nil
}

// Serve runs the HTTP server until Close.
func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.conns.mu.Lock()
	l.establish = establish
	l.conns.mu.Unlock()
	if !l.conns.add(nil) {
		return
	}
	defer l.conns.done(nil)
	var ln net.Listener = l.ln
	if l.tls != nil {
		// Inside the guard: the connect timeout bounds the handshake too.
		ln = tls.NewListener(ln, l.tls)
	}
	if err := l.srv.Serve(&guardListener{Listener: ln, timeout: l.connectTimeout}); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		l.log.Error("websocket listener stopped", "error", err)
	}
}

func (l *wsListener) handle(w http.ResponseWriter, r *http.Request) {
	ws, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered with an HTTP error
	}
	// The guard of the accepted connection stops closing it: from here the deadline bounds
	// the wait for CONNECT, counted from the accept, and mochi replaces it once the client is
	// admitted.
	deadline := time.Now().Add(l.connectTimeout)
	if g, ok := ws.NetConn().(*guardedConn); ok {
		if !g.disarm() {
			_ = ws.Close() // the connect timeout ran out during the upgrade
			return
		}
		deadline = g.acceptedAt.Add(l.connectTimeout)
	}
	conn := &wsConn{Conn: ws.NetConn(), ws: ws}
	if !l.conns.add(conn) {
		_ = conn.Close()
		return
	}
	defer l.conns.done(conn)
	ws.SetReadLimit(l.readLimit)
	_ = conn.SetDeadline(deadline)
	l.conns.mu.Lock()
	establish := l.establish
	l.conns.mu.Unlock()
	if err := establish(l.id, conn); err != nil {
		l.log.Debug("mqtt connection ended", "remote", conn.RemoteAddr().String(), "error", err)
	}
}

// Close stops the HTTP server, disconnects this listener's clients and waits for them.
func (l *wsListener) Close(closeClients listeners.CloseFn) {
	if l.srv != nil {
		_ = l.srv.Close() // upgraded connections are not the server's but ours
	}
	if l.ln != nil {
		_ = l.ln.Close() // in case Serve never ran
	}
	endClients(l.disconnect, closeClients, l.id)
	l.conns.close()
}

// endClients ends a closing listener's clients: with disconnect when the broker set it, else
// with mochi's CloseFn.
func endClients(disconnect func(string), closeClients listeners.CloseFn, id string) {
	if disconnect != nil {
		disconnect(id)
		return
	}
	closeClients(id)
}

// disconnectListenerClients is mochi's Server.closeListenerClients without its deadlock: in
// mochi v2.7.9 Clients.GetByListener takes the clients' read lock and then again through
// Clients.Len, so a client connecting or leaving (Clients.Add or Delete, a writer) between the
// two locks hangs the broker's Close and every later connection for good
// (github.com/mochi-mqtt/server/issues/488, fix not released). GetAll takes the lock once.
func disconnectListenerClients(server *mqtt.Server, listenerID string) {
	for _, cl := range server.Clients.GetAll() {
		if cl.Net.Listener == listenerID && !cl.Closed() {
			_ = server.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// wsConn is a WebSocket connection as the byte stream mochi reads and writes. Deadlines and
// addresses are the underlying connection's.
type wsConn struct {
	net.Conn
	ws *websocket.Conn
	r  io.Reader // the message being read, if any
}

var errTextFrame = errors.New("websocket: MQTT needs binary messages")

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, errTextFrame
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue // next message
			}
			err = nil
		}
		return n, err
	}
}

// Write sends p as one binary message. mochi serialises a client's writes.
func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error { return c.ws.Close() }

// guardListener hands out connections that close themselves timeout after the accept unless
// they were upgraded to WebSocket first. net/http moves a connection's deadlines as it reads
// requests and clears them while it waits for the next one, so a deadline alone does not bound
// how long a socket that never speaks MQTT may stay open.
type guardListener struct {
	net.Listener
	timeout time.Duration
}

func (l *guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	g := &guardedConn{Conn: c, acceptedAt: time.Now()}
	g.timer = time.AfterFunc(l.timeout, func() { _ = c.Close() })
	return g, nil
}

// guardedConn is an accepted connection that its timer closes unless disarmed.
type guardedConn struct {
	net.Conn
	acceptedAt time.Time
	timer      *time.Timer
}

// disarm stops the timer; false if it has fired (the connection is closed).
func (c *guardedConn) disarm() bool { return c.timer.Stop() }

func (c *guardedConn) Close() error {
	c.timer.Stop()
	return c.Conn.Close()
}

// CloseWrite lets net/http half-close before it closes, so the client reads the response and
// then EOF rather than a reset.
func (c *guardedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
