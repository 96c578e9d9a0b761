// Package link is the simulated short-range link (BLE/NFC) of the cars a process runs: one
// HTTP server on loopback that hands a phone's challenge requests and signed commands to the
// car (pkg/vehicle) with that VIN in a vehicle.Garage.
package link

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
)

// Timeouts of the link's HTTP server. A local exchange is one small request; anything slower
// is a stuck or hostile client.
const (
	readTimeout     = 5 * time.Second
	writeTimeout    = 10 * time.Second // a command may wait for the car's current one and an fsync
	idleTimeout     = 30 * time.Second
	maxHeaderBytes  = 8 << 10
	shutdownTimeout = 5 * time.Second
)

// DefaultAddr is where vehicle-sim opens the local link unless told otherwise.
const DefaultAddr = protocol.DefaultLinkAddr

// CheckAddr accepts host:port addresses on loopback only (an IP literal or localhost; port
// 0 picks a free one). Reaching the link stands for standing next to the car: on any other
// interface, everyone on the network would be next to every car.
func CheckAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("local link address %q: %w (want 127.0.0.1:PORT)", addr, err)
	}
	if port == "" {
		return fmt.Errorf("local link address %q has no port", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("local link address %q is not on loopback: being able to reach the link stands for being next to the car (use 127.0.0.1:PORT)", addr)
	}
	return nil
}

// Server is the simulated short-range link (BLE/NFC) of every car in a garage: one HTTP
// server on loopback.
//
//	POST /v1/link/{vin}/challenge   body empty or protocol.ChallengeRequest → 200 protocol.Challenge
//	                                (with the car's proof of identity for a phone_nonce)
//	POST /v1/link/{vin}/command     body protocol.LocalRequest → 200 protocol.Result
//
// A challenge request over its key's budget, or over the budget shared by requests no whitelisted
// key signed, is answered 429 rate_limited (see vehicle.MaxChallengesPerKey); a malformed one
// (see DecodeChallengeRequest) 400 bad_request.
// A command the car refuses is answered 200 with status rejected and its reason (see
// vehicle.Car.HandleLocal). Errors that never reach a car are {"error": REASON, "message": TEXT}: 400
// bad_request for a malformed VIN or a body that is not a LocalRequest (bodies are bounded to
// protocol.MaxPayloadBytes), 404 vehicle_unknown for a VIN this process does not run, 405 for
// another method.
//
// Use: NewServer(garage, logger), Start("127.0.0.1:0"), Addr(), Close(); or Handler() to
// mount it elsewhere.
type Server struct {
	garage *vehicle.Garage
	log    *slog.Logger
	mux    *http.ServeMux

	mu     sync.Mutex
	srv    *http.Server
	ln     net.Listener
	served chan struct{} // closed when Serve returned
	closed bool
}

// NewServer returns a link for the cars of garage; logger may be nil.
func NewServer(garage *vehicle.Garage, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{garage: garage, log: logger.With("component", "link"), mux: http.NewServeMux()}
	s.mux.HandleFunc("POST /v1/link/{vin}/challenge", s.challenge)
	s.mux.HandleFunc("POST /v1/link/{vin}/command", s.command)
	return s
}

// Handler is the link's HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Start listens on addr, which must be on loopback (CheckAddr), and serves in the
// background until Close.
func (s *Server) Start(addr string) error {
	if err := CheckAddr(addr); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.srv != nil {
		return errors.New("local link: already started or closed")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("local link: %w", err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: readTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.served = make(chan struct{})
	go func() {
		defer close(s.served)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("local link stopped", "err", err)
		}
	}()
	s.log.Info("local link listening", "addr", ln.Addr().String())
	return nil
}

// Addr is the address the link listens on (with the port chosen for :0); "" before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// URL is http://Addr().
func (s *Server) URL() string { return "http://" + s.Addr() }

// Close stops accepting requests, lets those in progress finish (for at most 5 s) and waits
// for the server's goroutine. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	srv, served := s.srv, s.served
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(ctx)
	if err != nil {
		err = srv.Close()
	}
	<-served
	return err
}

// car finds the request's car, or answers 400/404.
func (s *Server) car(w http.ResponseWriter, r *http.Request) (*vehicle.Car, bool) {
	vin := r.PathValue("vin")
	if !protocol.ValidVIN(vin) {
		writeError(w, http.StatusBadRequest, protocol.ReasonBadRequest, "malformed VIN")
		return nil, false
	}
	car, ok := s.garage.Car(vin)
	if !ok {
		writeError(w, http.StatusNotFound, protocol.ReasonVehicleUnknown, "no car with this VIN on this link")
		return nil, false
	}
	return car, true
}

// maxChallengeBodyBytes bounds a challenge request's body ({"v":1,"key_id":"…"}).
const maxChallengeBodyBytes = 1 << 10

func (s *Server) challenge(w http.ResponseWriter, r *http.Request) {
	car, ok := s.car(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxChallengeBodyBytes+1))
	var req protocol.ChallengeRequest
	if err == nil && len(body) > 0 {
		req, err = DecodeChallengeRequest(body)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, protocol.ReasonBadRequest,
			fmt.Sprintf("the body must be empty or a JSON ChallengeRequest {\"v\":1,\"key_id\":\"…\",\"ts\":…,\"sig\":\"…\",\"phone_nonce\":\"…\"} of at most %d bytes", maxChallengeBodyBytes))
		return
	}
	ch, err := car.Challenge(req)
	if err != nil {
		s.log.Debug("challenge refused", "vin", car.VIN(), "key_id", req.KeyID, "err", err)
		msg := err.Error()
		if inner := errors.Unwrap(err); inner != nil {
			msg = inner.Error() // the reason is in "error" already
		}
		status := http.StatusInternalServerError
		switch protocol.ReasonOf(err) {
		case protocol.ReasonRateLimited:
			status = http.StatusTooManyRequests
		case protocol.ReasonBadRequest:
			status = http.StatusBadRequest
		}
		writeError(w, status, protocol.ReasonOf(err), msg)
		return
	}
	writeJSON(w, http.StatusOK, ch)
}

// DecodeChallengeRequest decodes a non-empty challenge request body: at most 1 KiB of JSON, a
// key id that is an id when present, a signature of at most 128 characters, and a phone nonce
// of protocol.PhoneNonceMinBytes to PhoneNonceMaxBytes when present (bad_request otherwise).
func DecodeChallengeRequest(body []byte) (protocol.ChallengeRequest, error) {
	var req protocol.ChallengeRequest
	if len(body) > maxChallengeBodyBytes || json.Unmarshal(body, &req) != nil ||
		(req.KeyID != "" && !protocol.ValidID(req.KeyID)) || len(req.Sig) > 128 {
		return protocol.ChallengeRequest{}, protocol.Refuse(protocol.ReasonBadRequest, "malformed challenge request")
	}
	if req.PhoneNonce != "" {
		if err := protocol.CheckPhoneNonce(req.PhoneNonce); err != nil {
			return protocol.ChallengeRequest{}, err
		}
	}
	return req, nil
}

func (s *Server) command(w http.ResponseWriter, r *http.Request) {
	car, ok := s.car(w, r)
	if !ok {
		return
	}
	// One byte more than allowed tells an oversized body from one of exactly the limit.
	body, err := io.ReadAll(io.LimitReader(r.Body, protocol.MaxPayloadBytes+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, protocol.ReasonBadRequest, "could not read the request body")
		return
	}
	req, err := vehicle.DecodeLocalRequest(body)
	if err != nil {
		s.log.Debug("malformed local request", "vin", car.VIN(), "err", err)
		writeError(w, http.StatusBadRequest, protocol.ReasonBadRequest,
			fmt.Sprintf("the body must be a JSON LocalRequest {\"v\":1,\"command\":{doc,sig,kid}} of at most %d bytes", protocol.MaxPayloadBytes))
		return
	}
	writeJSON(w, http.StatusOK, car.HandleLocal(req))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal","message":"encoding the answer failed"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, reason protocol.Reason, msg string) {
	writeJSON(w, status, struct {
		Error   protocol.Reason `json:"error"`
		Message string          `json:"message"`
	}{reason, msg})
}
