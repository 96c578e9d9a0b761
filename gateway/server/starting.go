package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"

	"telematics/gateway/httpapi"
	"telematics/pkg/protocol"
)

// swappableHandler serves the "starting" answers until Start installs the API's handler.
type swappableHandler struct {
	h atomic.Pointer[http.Handler]
}

func (s *swappableHandler) set(h http.Handler) { s.h.Store(&h) }

func (s *swappableHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*s.h.Load()).ServeHTTP(w, r)
}

// listenHTTP opens the HTTP listeners first thing in Start: /healthz answers 200 whenever the
// process runs (also while it waits for an unreachable external broker), /readyz answers 503
// until Start is done, and everything else 503 with "retry". A busy port fails the start
// before anything is written to the data directory. The HTTPS listener is bound here too but
// serves only once its certificate is loaded (serveHTTPS).
func (g *Gateway) listenHTTP() error {
	if g.cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", g.cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("listen for HTTP on %s: %w", g.cfg.HTTPAddr, err)
		}
		g.httpLn = ln
	}
	if g.cfg.TLS.HTTPAddr != "" {
		ln, err := net.Listen("tcp", g.cfg.TLS.HTTPAddr)
		if err != nil {
			return fmt.Errorf("listen for HTTPS on %s: %w", g.cfg.TLS.HTTPAddr, err)
		}
		g.httpsLn = ln
	}
	g.http.set(startingHandler(g.cfg))
	hctx, cancel := context.WithCancel(context.Background())
	g.cancel, g.httpCtx = cancel, hctx
	if g.httpLn != nil {
		g.serveHTTP(g.httpLn)
	}
	return nil
}

// serveHTTPS starts serving the HTTPS listener with the loaded certificates.
func (g *Gateway) serveHTTPS() {
	if g.httpsLn != nil {
		g.serveHTTP(tls.NewListener(g.httpsLn, g.certs.ServerConfig()))
	}
}

// serveHTTP serves ln until Close; each server reports on httpDone.
func (g *Gateway) serveHTTP(ln net.Listener) {
	g.httpServing++
	go func() { g.httpDone <- httpapi.Serve(g.httpCtx, ln, &g.http, g.log.With("component", "http")) }()
}

func startingHandler(cfg Config) http.Handler {
	msg := "the gateway is starting"
	if cfg.ExternalBroker != "" {
		msg += " (connecting to the broker " + cfg.ExternalBroker + ")"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		httpapi.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "message": msg})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "1")
		httpapi.Error(w, http.StatusServiceUnavailable, protocol.ReasonInternal, msg+"; retry shortly")
	})
	return mux
}
