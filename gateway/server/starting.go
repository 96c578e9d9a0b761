package server

import (
	"context"
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

// listenHTTP opens the HTTP listener first thing in Start: /healthz answers 200 whenever the
// process runs (also while it waits for an unreachable external broker), /readyz answers 503
// until Start is done, and everything else 503 with "retry". A busy port fails the start
// before anything is written to the data directory.
func (g *Gateway) listenHTTP() error {
	ln, err := net.Listen("tcp", g.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen for HTTP on %s: %w", g.cfg.HTTPAddr, err)
	}
	g.httpLn = ln
	g.http.set(startingHandler(g.cfg))
	hctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go func() { g.httpDone <- httpapi.Serve(hctx, ln, &g.http) }()
	return nil
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
