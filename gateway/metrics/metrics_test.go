package metrics

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"telematics/gateway/audit"
)

// A car reports its journal's status in its own words: however many different strings it
// sends, the gateway keeps a bounded number of series, and a reason outside the closed list is
// counted as "other".
func TestLabelsStayBounded(t *testing.T) {
	m := New()
	for i := range 500 {
		m.ObserveAudit(audit.Event{Kind: audit.KindVehicle, Outcome: fmt.Sprintf("status%d", i), Reason: fmt.Sprintf("why%d", i)})
	}
	m.ObserveAudit(audit.Event{Kind: audit.KindVehicle, Outcome: "Executed; DROP TABLE", Reason: "key_revoked"})
	m.ObserveAudit(audit.Event{Kind: audit.KindLogin, Outcome: "refused", Reason: "unauthenticated"})
	// The first maxOutcomes outcomes (reason "other"), everything after them as other/other,
	// the malformed one as other/key_revoked, and the login.
	if n := testutil.CollectAndCount(m.events); n != maxOutcomes+3 {
		t.Fatalf("%d series after 500 different outcomes, want %d", n, maxOutcomes+3)
	}
	if got := testutil.ToFloat64(m.events.WithLabelValues(audit.KindVehicle, "other", "other")); got != 500-maxOutcomes {
		t.Fatalf("%v events counted as other/other, want %d", got, 500-maxOutcomes)
	}
	if got := testutil.ToFloat64(m.events.WithLabelValues(audit.KindVehicle, "other", "key_revoked")); got != 1 {
		t.Fatalf("malformed outcome: %v", got)
	}
	if got := testutil.ToFloat64(m.events.WithLabelValues(audit.KindLogin, "refused", "unauthenticated")); got != 1 {
		t.Fatalf("login refusal: %v", got)
	}
}
