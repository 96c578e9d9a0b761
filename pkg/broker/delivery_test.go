package broker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
)

// TestFanInToGatewayLosesNothing: many cars publish QoS 1 as fast as they can to a gateway
// subscriber over the network, with a tiny write queue so that mochi's queue overflows all
// the time. Every message must reach the gateway (mochi alone drops the overflow).
func TestFanInToGatewayLosesNothing(t *testing.T) {
	t.Parallel()
	cars, perCar := 40, 250
	if testing.Short() {
		cars, perCar = 10, 100
	}
	f := startBroker(t, func(c *Config) { c.WSAddr = ""; c.MaxClientWritesPending = 16 })
	var mu sync.Mutex
	got := map[string]map[int]bool{}
	var total atomic.Int64
	gw := mustPaho(t, f.tcpURL(), f.creds(t, "gateway", protocol.RoleGateway, ""), func(o *paho.ClientOptions) {
		o.SetOrderMatters(true)
	})
	tok := gw.Subscribe("v/+/telemetry", 1, func(_ paho.Client, m paho.Message) {
		var vin string
		var seq int
		fmt.Sscanf(string(m.Payload()), "%17s %d", &vin, &seq)
		time.Sleep(20 * time.Microsecond) // a gateway that does some work per message
		mu.Lock()
		if got[vin] == nil {
			got[vin] = map[int]bool{}
		}
		got[vin][seq] = true
		mu.Unlock()
		total.Add(1)
	})
	if !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	var wg sync.WaitGroup
	for c := 0; c < cars; c++ {
		vin := fmt.Sprintf("1HGCM8263%08d", c)
		car := mustPaho(t, f.tcpURL(), f.creds(t, vin, protocol.RoleVehicle, ""), func(o *paho.ClientOptions) {
			o.SetMaxResumePubInFlight(64)
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			toks := make([]paho.Token, 0, perCar)
			for i := 0; i < perCar; i++ {
				toks = append(toks, car.Publish("v/"+vin+"/telemetry", 1, false, fmt.Sprintf("%s %d %0200d", vin, i, 0)))
			}
			for _, tk := range toks {
				if !tk.WaitTimeout(60*time.Second) || tk.Error() != nil {
					t.Errorf("publish from %s: %v", vin, tk.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
	want := int64(cars * perCar)
	testutil.Eventually(t, 60*time.Second, func() error {
		if n := total.Load(); n < want {
			return fmt.Errorf("gateway received %d of %d acknowledged messages", n, want)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for vin, seqs := range got {
		if len(seqs) != perCar {
			t.Errorf("%s: %d distinct messages of %d", vin, len(seqs), perCar)
		}
	}
	t.Logf("%d messages from %d cars, all delivered; mochi counted %d drops the hook delivered directly",
		want, cars, f.b.Server().Info.MessagesDropped)
}
