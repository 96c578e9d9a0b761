package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/internal/testutil"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

// Case 13 of issue 8, the gateway's side: a car's summary entry (refusals counted while its
// journal was full) lands in the audit log with its count, and the gateway acknowledges it on
// v/{vin}/events/ack, once filed and again when it is redelivered.
func TestJournalSummaryCountInAudit(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), nil)
	creds := provision(t, g, 1)[0]
	car, err := dialCar(g.BrokerURL(), creds)
	if err != nil {
		t.Fatal(err)
	}
	defer car.Close()
	var mu sync.Mutex
	var acked []uint64
	err = car.Subscribe(context.Background(), protocol.VehicleTopic(creds.VIN, protocol.SuffixEventsAck), 1, func(m mqttc.Message) {
		var ack protocol.EventsAck
		if json.Unmarshal(m.Payload, &ack) == nil && ack.VIN == creds.VIN {
			mu.Lock()
			acked = append(acked, ack.Seqs...)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	nowMs := time.Now().UnixMilli()
	ev := protocol.VehicleEvent{V: 1, VIN: creds.VIN, Seq: 1030, Kind: protocol.EventLocalCommand, KeyID: "k1", User: "rob",
		Action: protocol.ActionUnlock, Status: protocol.ResultRejected, Reason: protocol.ReasonKeyRevoked,
		Count: 7, FirstTsMs: nowMs - 60_000, TsMs: nowMs}
	b, _ := json.Marshal(ev)
	for i := 0; i < 2; i++ { // the second is a redelivery
		if err := car.Publish(context.Background(), protocol.VehicleTopic(creds.VIN, protocol.SuffixEvents), 1, false, b); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !slices.Equal(acked, []uint64{1030, 1030}) {
			return fmt.Errorf("acknowledged %v", acked)
		}
		return nil
	})
	evs, err := g.Audit().Query(audit.Filter{VIN: creds.VIN, Kind: audit.KindVehicle})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || !strings.Contains(evs[0].Detail, "count=7") || evs[0].Reason != string(protocol.ReasonKeyRevoked) || evs[0].User != "rob" {
		t.Fatalf("audit %+v, want one key_revoked record with count=7", evs)
	}
}
