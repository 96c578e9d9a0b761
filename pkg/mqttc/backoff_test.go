package mqttc

import (
	"testing"
	"time"
)

func TestBackoffDelay(t *testing.T) {
	t.Parallel()
	b := Backoff{Min: time.Second, Max: 30 * time.Second}
	tests := []struct {
		name    string
		attempt int
		r       float64
		want    time.Duration
	}{
		{"first attempt, no wait", 0, 0, 0},
		{"first attempt, middle of [0,1s)", 0, 0.5, 500 * time.Millisecond},
		{"second attempt, window 2s", 1, 0.5, time.Second},
		{"fifth attempt, window 16s", 4, 0.25, 4 * time.Second},
		{"sixth attempt, capped at 30s", 5, 0.5, 15 * time.Second},
		{"huge attempt, no overflow", 1000, 0.5, 15 * time.Second},
		{"r out of range is clamped low", 2, -1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := b.Delay(tc.attempt, tc.r); got != tc.want {
				t.Fatalf("Delay(%d, %v) = %s, want %s", tc.attempt, tc.r, got, tc.want)
			}
		})
	}
}

// Every delay lies in [0, min(Max, Min·2^n)), and r spreads it across the whole window: a
// fleet that lost the broker at the same instant comes back spread out, not in one second.
func TestBackoffJitterSpreadsWithinWindow(t *testing.T) {
	t.Parallel()
	b := Backoff{Min: 100 * time.Millisecond, Max: 3 * time.Second}
	for attempt := range 70 {
		window := b.Min
		for range attempt {
			if window *= 2; window >= b.Max {
				window = b.Max
				break
			}
		}
		lo, hi := b.Delay(attempt, 0), b.Delay(attempt, 0.999999)
		if lo != 0 || hi >= window || hi < window*99/100 {
			t.Fatalf("attempt %d: delays [%s, %s] do not span [0, %s)", attempt, lo, hi, window)
		}
		if got := b.Delay(attempt, 1); got >= window {
			t.Fatalf("attempt %d: r=1 gave %s, not below %s", attempt, got, window)
		}
	}
}

func TestValidTopicAndFilter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		s             string
		topic, filter bool
	}{
		{"v/1HGCM82633A004352/telemetry", true, true},
		{"v/+/telemetry", false, true},
		{"v/#", false, true},
		{"#", false, true},
		{"$share/gateway/v/+/result", false, true},
		{"", false, false},
		{"v/a+/x", false, false},
		{"v/#/x", false, false},
		{"v/x#", false, false},
		{"v/\x00", false, false},
	}
	for _, tc := range tests {
		if got := validTopic(tc.s); got != tc.topic {
			t.Errorf("validTopic(%q) = %v", tc.s, got)
		}
		if got := validFilter(tc.s); got != tc.filter {
			t.Errorf("validFilter(%q) = %v", tc.s, got)
		}
	}
}
