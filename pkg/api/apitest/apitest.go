// Package apitest stands in for the gateway's HTTP API in tests of its clients (pkg/api, the
// phone, the app commands): a real HTTP server that checks the bearer token, answers each route
// with what the test sets, and records every request and body.
package apitest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// Answer is a route's canned response to a request body: the status and what to send as JSON.
type Answer func(body []byte) (status int, out any)

// Gateway is the stand-in. A route is "METHOD /path?query" or "METHOD /path"; a request is
// answered by its route with the query first, then without. With no answer it is a 404
// bad_request; with a bearer token other than the one given, a 401 unauthenticated.
type Gateway struct {
	// URL is the server's base URL, for the client under test.
	URL string

	mu      sync.Mutex
	reqs    []string // "METHOD /path?query", since the last Take
	bodies  [][]byte // since the last Take
	all     [][]byte // every body ever received
	answers map[string]Answer
}

// NewGateway starts a stand-in that admits the bearer token; the test's cleanup stops it.
func NewGateway(t testing.TB, token string) *Gateway {
	t.Helper()
	g := &Gateway{answers: map[string]Answer{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		g.reqs = append(g.reqs, r.Method+" "+r.URL.RequestURI())
		g.bodies = append(g.bodies, body)
		g.all = append(g.all, body)
		answer := g.answers[r.Method+" "+r.URL.RequestURI()]
		if answer == nil {
			answer = g.answers[r.Method+" "+r.URL.Path]
		}
		g.mu.Unlock()
		status, out := http.StatusNotFound, any(map[string]string{"error": "bad_request", "message": "no such route"})
		switch {
		case r.Header.Get("Authorization") != "Bearer "+token:
			status, out = http.StatusUnauthorized, map[string]string{"error": "unauthenticated", "message": "no token"}
		case answer != nil:
			status, out = answer(body)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(srv.Close)
	g.URL = srv.URL
	return g
}

// On sets the answer of a route.
func (g *Gateway) On(route string, f Answer) {
	g.mu.Lock()
	g.answers[route] = f
	g.mu.Unlock()
}

// OnJSON sets the answer of a route from the request body decoded as a JSON object (nil when
// it is not one).
func (g *Gateway) OnJSON(route string, f func(body map[string]any) (int, any)) {
	g.On(route, func(b []byte) (int, any) {
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return f(m)
	})
}

// Last is the latest request and its body decoded as a JSON object.
func (g *Gateway) Last() (string, map[string]any) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var m map[string]any
	_ = json.Unmarshal(g.bodies[len(g.bodies)-1], &m)
	return g.reqs[len(g.reqs)-1], m
}

// Bodies are the request bodies since the last Take.
func (g *Gateway) Bodies() [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([][]byte(nil), g.bodies...)
}

// All is every request body received, Take or not.
func (g *Gateway) All() [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([][]byte(nil), g.all...)
}

// Take returns the requests since the last Take, with their bodies decoded and raw, and
// forgets them.
func (g *Gateway) Take() ([]string, []map[string]any, [][]byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var ms []map[string]any
	for _, b := range g.bodies {
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		ms = append(ms, m)
	}
	reqs, raw := g.reqs, g.bodies
	g.reqs, g.bodies = nil, nil
	return reqs, ms, raw
}
