/*
 * smarthub light node (ESP32, Arduino core)
 *
 * Reference implementation of the smarthub firmware contract
 * (see ../../README.md and ../../asyncapi.json).
 *
 *   publishes  smarthub/nodes/livingroom/status   "online" retained (birth); last will "offline" retained QoS 1
 *   publishes  smarthub/nodes/livingroom/light    light_reading JSON every 30 s
 *   subscribes smarthub/light/state               "ON" | "OFF" (retained) -> drives the relay
 *   subscribes smarthub/nodes/livingroom/error    refusals from the hub -> logged to Serial
 *
 * Hardware:
 *   DHT22 data  -> GPIO 4     (temperature, degrees C)
 *   PIR output  -> GPIO 27    (motion, HIGH = motion)
 *   LDR divider -> GPIO 34    (ADC1; LDR from 3.3 V to the pin, 10 kOhm from the pin to GND)
 *   Relay IN    -> GPIO 26    (HIGH = light on)
 *
 * Libraries (Arduino Library Manager):
 *   PubSubClient (Nick O'Leary) 2.8+, ArduinoJson (Benoit Blanchon) 7.x,
 *   DHT sensor library (Adafruit) + Adafruit Unified Sensor.
 *
 * Contract notes:
 *   - MQTT 3.1.1: PubSubClient's default (MQTT_VERSION_3_1_1). Do NOT define
 *     MQTT_VERSION as MQTT_VERSION_3_1: the hub rejects MQTT 3.1.
 *   - Keep-alive must be non-zero: the hub's broker (rumqttd) refuses keep-alive 0.
 *   - PubSubClient can only PUBLISH at QoS 0. The contract asks for QoS 1 on readings;
 *     QoS 0 from this sketch is tolerated (a lost reading is simply missing from the
 *     history). The last will IS sent at QoS 1, and subscriptions use QoS 1.
 *     For true QoS 1 publishes use a client such as espMqttClient or 256dpi/arduino-mqtt.
 *   - Readings taken while the broker is unreachable are buffered and replayed with
 *     "ts" (unix seconds) once NTP time is known. The hub stores replayed readings
 *     but triggers nothing from them; ts more than 5 min in the future is refused.
 *   - On an anonymous broker anyone can read smarthub/door/set (door PIN): set
 *     MQTT_USER / MQTT_PASS and enable passwords on the hub.
 */

#include <WiFi.h>
#include <PubSubClient.h>
#include <ArduinoJson.h>
#include <DHT.h>
#include <time.h>

// ---------------------------------------------------------------- configuration
static const char* WIFI_SSID     = "your-ssid";
static const char* WIFI_PASSWORD = "your-wifi-password";

static const char*    MQTT_HOST = "smarthub.local";  // if .local does not resolve on your core, use the IP
static const uint16_t MQTT_PORT = 1883;
static const char*    MQTT_USER = "";   // empty = anonymous (not recommended)
static const char*    MQTT_PASS = "";

static const char* BASE_TOPIC = "smarthub";    // must match the hub's configured base topic
static const char* NODE_ID    = "livingroom";  // ^[a-z0-9_-]{1,64}$

static const uint16_t KEEP_ALIVE_S        = 30;      // non-zero!
static const uint32_t READING_INTERVAL_MS = 30000;   // one light_reading every 30 s
static const uint32_t BACKOFF_MIN_MS      = 1000;
static const uint32_t BACKOFF_MAX_MS      = 60000;

static const uint8_t PIN_DHT   = 4;
static const uint8_t PIN_PIR   = 27;
static const uint8_t PIN_LDR   = 34;
static const uint8_t PIN_RELAY = 26;

static const float LDR_FIXED_OHMS = 10000.0f;  // fixed resistor of the divider
static const float LDR_LUX_COEFF  = 500.0f;    // GL5528-ish: lux ~= 500 / R[kOhm]

// ---------------------------------------------------------------- globals
DHT dht(PIN_DHT, DHT22);
WiFiClient net;
PubSubClient mqtt(net);

char topicStatus[96];
char topicLight[96];
char topicError[96];
char topicLightState[96];

bool motionSeen = false;        // latched PIR state since the last reading
bool lightKnown = false;        // have we received smarthub/light/state yet?
bool lightOn    = false;

uint32_t lastReadingMs   = 0;
uint32_t nextReconnectMs = 0;
uint32_t backoffMs       = BACKOFF_MIN_MS;

// Readings taken while MQTT is down, replayed later with "ts".
struct Reading {
  float    temperature;
  bool     motion;
  float    lux;
  bool     hasActive;
  bool     active;
  uint32_t ts;       // unix seconds
};
static const size_t BUFFER_SIZE = 32;
Reading buffered[BUFFER_SIZE];
size_t bufHead = 0;   // oldest entry
size_t bufCount = 0;

// ---------------------------------------------------------------- helpers
static bool timeValid() {
  return time(nullptr) > 1700000000;  // NTP has synced (after Nov 2023)
}

static float readLux() {
  int adc = analogRead(PIN_LDR);             // 0..4095, 12-bit
  if (adc <= 0) return 0.0f;                 // pitch dark
  if (adc >= 4095) adc = 4094;               // avoid division by zero
  // Pin voltage rises with light: R_ldr = R_fixed * (4095 - adc) / adc
  float rLdr = LDR_FIXED_OHMS * (4095.0f - adc) / adc;
  float lux = LDR_LUX_COEFF / (rLdr / 1000.0f);
  return lux < 0.0f ? 0.0f : lux;            // contract: light_intensity >= 0
}

static void setRelay(bool on) {
  lightOn = on;
  digitalWrite(PIN_RELAY, on ? HIGH : LOW);
}

// Serialise and publish a light_reading. withTs = false for a live reading (the hub
// stamps it on receipt), true for a buffered reading being replayed.
static bool publishReading(const Reading& r, bool withTs) {
  JsonDocument doc;
  doc["temperature"]     = r.temperature;   // -50..=100 (DHT22 range is -40..80)
  doc["motion"]          = r.motion;
  doc["light_intensity"] = r.lux;
  if (r.hasActive) doc["active"] = r.active;  // optional label: is the light on
  if (withTs) doc["ts"] = r.ts;               // replay of a buffered reading

  char payload[192];
  size_t n = serializeJson(doc, payload, sizeof(payload));
  if (n == 0 || n >= sizeof(payload)) return false;
  // QoS 0 (PubSubClient limitation, see header), not retained.
  return mqtt.publish(topicLight, payload, false);
}

static void bufferReading(const Reading& r) {
  if (!timeValid()) return;  // without a clock we cannot back-date it; drop it
  size_t idx = (bufHead + bufCount) % BUFFER_SIZE;
  buffered[idx] = r;
  if (bufCount < BUFFER_SIZE) {
    bufCount++;
  } else {
    bufHead = (bufHead + 1) % BUFFER_SIZE;  // full: overwrite the oldest
  }
}

static void replayBuffered(size_t maxPerCall) {
  while (bufCount > 0 && maxPerCall-- > 0 && mqtt.connected()) {
    if (!publishReading(buffered[bufHead], true)) return;
    bufHead = (bufHead + 1) % BUFFER_SIZE;
    bufCount--;
  }
}

// ---------------------------------------------------------------- MQTT
static void onMessage(char* topic, byte* payload, unsigned int length) {
  if (strcmp(topic, topicLightState) == 0) {
    // light_state: exactly "ON" or "OFF"
    if (length == 2 && memcmp(payload, "ON", 2) == 0) {
      setRelay(true);
      lightKnown = true;
    } else if (length == 3 && memcmp(payload, "OFF", 3) == 0) {
      setRelay(false);
      lightKnown = true;
    }
    return;
  }
  if (strcmp(topic, topicError) == 0) {
    // error: {"topic": ..., "error": ..., "reason": ...}
    JsonDocument doc;
    if (deserializeJson(doc, payload, length)) return;
    Serial.printf("[hub refused] %s: %s (%s)\n",
                  doc["topic"] | "?", doc["error"] | "?", doc["reason"] | "?");
  }
}

static bool mqttConnect() {
  char clientId[80];
  snprintf(clientId, sizeof(clientId), "smarthub-node-%s", NODE_ID);
  const char* user = (MQTT_USER && *MQTT_USER) ? MQTT_USER : nullptr;
  const char* pass = (MQTT_PASS && *MQTT_PASS) ? MQTT_PASS : nullptr;

  // Last will: smarthub/nodes/<id>/status = "offline", QoS 1, retained. Clean session.
  bool ok = mqtt.connect(clientId, user, pass,
                         topicStatus, 1 /* will QoS */, true /* will retain */, "offline",
                         true /* clean session */);
  if (!ok) {
    Serial.printf("MQTT connect failed, state=%d\n", mqtt.state());
    return false;
  }
  // Birth: "online", retained, right after connecting.
  mqtt.publish(topicStatus, "online", true);
  mqtt.subscribe(topicLightState, 1);  // retained -> we get the current state at once
  mqtt.subscribe(topicError, 1);
  Serial.println("MQTT connected");
  return true;
}

static void ensureConnected() {
  if (mqtt.connected()) return;
  uint32_t now = millis();
  if ((int32_t)(now - nextReconnectMs) < 0) return;  // still backing off

  bool ok = false;
  if (WiFi.status() != WL_CONNECTED) {
    WiFi.reconnect();
  } else {
    ok = mqttConnect();
  }
  if (ok) {
    backoffMs = BACKOFF_MIN_MS;
    nextReconnectMs = now;
  } else {
    // exponential backoff with jitter: 1 s, 2 s, 4 s ... 60 s
    nextReconnectMs = now + backoffMs + (esp_random() % 500);
    backoffMs = backoffMs * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoffMs * 2;
  }
}

// ---------------------------------------------------------------- Arduino
void setup() {
  Serial.begin(115200);
  pinMode(PIN_PIR, INPUT);
  pinMode(PIN_RELAY, OUTPUT);
  setRelay(false);
  analogReadResolution(12);
  dht.begin();

  snprintf(topicStatus,     sizeof(topicStatus),     "%s/nodes/%s/status", BASE_TOPIC, NODE_ID);
  snprintf(topicLight,      sizeof(topicLight),      "%s/nodes/%s/light",  BASE_TOPIC, NODE_ID);
  snprintf(topicError,      sizeof(topicError),      "%s/nodes/%s/error",  BASE_TOPIC, NODE_ID);
  snprintf(topicLightState, sizeof(topicLightState), "%s/light/state",     BASE_TOPIC);

  WiFi.mode(WIFI_STA);
  WiFi.setAutoReconnect(true);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  Serial.print("WiFi connecting");
  for (int i = 0; i < 40 && WiFi.status() != WL_CONNECTED; i++) {  // up to ~20 s, then carry on
    delay(500);
    Serial.print('.');
  }
  Serial.println(WiFi.status() == WL_CONNECTED ? " ok" : " not yet (will retry)");

  configTime(0, 0, "pool.ntp.org", "time.nist.gov");  // UTC; needed only for "ts"

  mqtt.setServer(MQTT_HOST, MQTT_PORT);
  mqtt.setCallback(onMessage);
  mqtt.setKeepAlive(KEEP_ALIVE_S);  // must be non-zero for rumqttd
  mqtt.setSocketTimeout(10);
  mqtt.setBufferSize(512);

  lastReadingMs = millis() - READING_INTERVAL_MS + 5000;  // first reading ~5 s after boot
}

void loop() {
  ensureConnected();
  mqtt.loop();

  if (digitalRead(PIN_PIR) == HIGH) motionSeen = true;

  uint32_t now = millis();
  if (now - lastReadingMs >= READING_INTERVAL_MS) {
    lastReadingMs = now;

    float t = dht.readTemperature();
    if (isnan(t) || t < -50.0f || t > 100.0f) {
      Serial.println("DHT22 read failed; skipping this reading");  // temperature is required
    } else {
      Reading r;
      r.temperature = t;
      r.motion      = motionSeen;
      r.lux         = readLux();
      r.hasActive   = lightKnown;   // only label when we know the light state
      r.active      = lightOn;
      r.ts          = timeValid() ? (uint32_t)time(nullptr) : 0;
      motionSeen    = false;

      if (mqtt.connected() && publishReading(r, false)) {
        Serial.printf("reading: %.1f C, motion=%d, %.1f lx\n", r.temperature, r.motion, r.lux);
      } else {
        bufferReading(r);  // replayed with "ts" after reconnect
      }
    }
  }

  if (mqtt.connected() && bufCount > 0) replayBuffered(4);  // a few per loop; do not flood
}
