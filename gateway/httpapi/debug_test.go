package httpapi

import (
	"bytes"
	"net/http"
	"testing"

	"telematics/pkg/protocol"
)

// The runtime's profiles are the admin's: without the admin token nothing is shown; with it,
// a heap profile after a collection carries the runtime's memory figures the bench reads.
func TestDebugProfilesAreAdminOnly(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	for _, path := range []string{"/debug/pprof/heap?debug=1", "/debug/pprof/goroutine", "/debug/pprof/profile?seconds=1"} {
		r := f.do("GET", path, "", nil)
		if e := errorBody(t, r); r.status != http.StatusUnauthorized || e.Error != protocol.ReasonUnauthenticated {
			t.Errorf("GET %s without the admin token: %d %+v", path, r.status, e)
		}
		r = f.do("GET", path, "Bearer not-the-token", nil)
		if r.status != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token: %d", path, r.status)
		}
	}
	r := f.do("GET", "/debug/pprof/heap?gc=1&debug=1", "Bearer "+adminToken, nil)
	if r.status != http.StatusOK || !bytes.Contains(r.body, []byte("# HeapInuse = ")) || !bytes.Contains(r.body, []byte("# Stack = ")) {
		t.Fatalf("heap profile: %d %.200s", r.status, r.body)
	}
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/debug/pprof/nothing", http.StatusNotFound},
		{"/debug/pprof/profile", http.StatusBadRequest},
		{"/debug/pprof/profile?seconds=3600", http.StatusBadRequest},
	} {
		r := f.do("GET", tc.path, "Bearer "+adminToken, nil)
		if e := errorBody(t, r); r.status != tc.status || e.Error != protocol.ReasonBadRequest {
			t.Errorf("GET %s: %d %+v, want %d", tc.path, r.status, e, tc.status)
		}
	}
}
