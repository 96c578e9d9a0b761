package httpapi

import (
	"fmt"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strconv"
	"time"

	"telematics/pkg/protocol"
)

// maxCPUProfile bounds GET /debug/pprof/profile?seconds=N, below the server's write timeout.
const maxCPUProfile = 25 * time.Second

// debugRoutes serves the Go runtime's profiles behind the admin token (they show the
// process's memory and code paths): GET /debug/pprof/{name} for heap, allocs, goroutine,
// block, mutex and threadcreate (?debug=1 for text, ?gc=1 to collect garbage first), and
// GET /debug/pprof/profile?seconds=N for a CPU profile. runtime/pprof, not net/http/pprof,
// whose import registers its handlers on http.DefaultServeMux.
func (a *API) debugRoutes(mux *http.ServeMux) {
	mux.Handle("GET /debug/pprof/profile", a.admin(cpuProfile))
	mux.Handle("GET /debug/pprof/{name}", a.admin(namedProfile))
}

func namedProfile(w http.ResponseWriter, r *http.Request) {
	p := pprof.Lookup(r.PathValue("name"))
	if p == nil {
		Error(w, http.StatusNotFound, protocol.ReasonBadRequest, "no such profile: want heap, allocs, goroutine, block, mutex or threadcreate")
		return
	}
	debug, _ := strconv.Atoi(r.URL.Query().Get("debug"))
	if r.URL.Query().Get("gc") == "1" {
		runtime.GC()
	}
	if debug > 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
	}
	_ = p.WriteTo(w, min(max(debug, 0), 2))
}

func cpuProfile(w http.ResponseWriter, r *http.Request) {
	secs, err := strconv.Atoi(r.URL.Query().Get("seconds"))
	if err != nil || secs < 1 || time.Duration(secs)*time.Second > maxCPUProfile {
		Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("seconds: want 1 to %d", int(maxCPUProfile/time.Second)))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if err := pprof.StartCPUProfile(w); err != nil {
		Error(w, http.StatusConflict, protocol.ReasonBadRequest, "a CPU profile is already running")
		return
	}
	select {
	case <-time.After(time.Duration(secs) * time.Second):
	case <-r.Context().Done():
	}
	pprof.StopCPUProfile()
}
