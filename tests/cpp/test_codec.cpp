// Tests for the codec's object budget (src/core/codec.hpp): the Writer and the reader count
// a body's objects alike, the reader refuses a body over the budget before its sink hears
// of the container that goes over, and JSON texts are counted as msgpack bodies are.
// Prints "N passed, N failed" last.
#include <cstdint>
#include <string>
#include <string_view>

#include "check.hpp"
#include "core/codec.hpp"

using namespace fastcache;
using namespace fastcache::codec;

// A sink that builds nothing and counts what it hears.
struct CountingSink {
    int events = 0;
    void nil() { ++events; }
    void boolean(bool) { ++events; }
    void int64(std::int64_t) { ++events; }
    void uint64(std::uint64_t) { ++events; }
    void float64(double) { ++events; }
    void str(std::string_view) { ++events; }
    void bin(std::string_view, bool) { ++events; }
    void begin_array(std::uint32_t, Tag) { ++events; }
    void end_array() {}
    void begin_map(std::uint32_t) { ++events; }
    void end_map() {}
    void bigint(std::string_view) { ++events; }
    void decimal(std::string_view) { ++events; }
    void uuid(const unsigned char*) { ++events; }
    void date(const Date&) { ++events; }
    void time(const TimeOfDay&, const TzInfo&) { ++events; }
    void datetime(const Date&, const TimeOfDay&, const TzInfo&) { ++events; }
    void timedelta(const TimeDelta&) { ++events; }
};

// Whether read_body accepts `body` under `budget`.
bool reads(std::string_view body, std::uint64_t budget, int* events = nullptr) {
    CountingSink sink;
    bool ok = true;
    try {
        read_body(body, sink, budget);
    } catch (const DecodeError&) {
        ok = false;
    }
    if (events) *events = sink.events;
    return ok;
}

// The Writer's count is exactly the reader's: the body reads at that budget, not one below
// (a budget is at least 1, which a lone root value always fits).
void check_counts_agree(Writer& w, std::uint64_t expected) {
    std::string body(w.view());
    CHECK_EQ(w.objects(), expected);
    CHECK(reads(body, w.objects()));
    if (expected > 1) CHECK(!reads(body, w.objects() - 1));
}

void test_counts() {
    Writer w;
    w.reset();
    w.str("page");
    check_counts_agree(w, 1);

    w.reset();  // [None, 1, "a", {"k": [1.5, b"x"]}]
    w.begin_array(4);
    w.nil();
    w.int64(1);
    w.str("a");
    w.begin_map(1);
    w.str("k");
    w.begin_array(2);
    w.float64(1.5);
    w.bin("x");
    check_counts_agree(w, 1 + 4 + 2 + 2);

    w.reset();  // (1, 2) and {3} and bytearray: one more each, for the tag
    w.begin_array(3);
    w.begin_array(2, Tag::Tuple);
    w.int64(1);
    w.int64(2);
    w.begin_array(1, Tag::Set);
    w.int64(3);
    w.bin("y", Tag::ByteArray);
    check_counts_agree(w, 1 + 3 + 3 + 2 + 2);

    std::uint8_t raw[16] = {};
    w.reset();  // a UUID holds its int
    w.begin_array(2);
    w.uuid(raw);
    w.uuid(raw);
    check_counts_agree(w, 1 + 2 + 2);

    // Fixed offsets: a new timezone (and timedelta) when the offset changes, shared after.
    TzInfo utc{TzInfo::Fixed, 0, {}};
    TzInfo named{TzInfo::Fixed, 3600000000LL, "CET"};
    w.reset();
    w.begin_array(4);
    w.datetime({2026, 1, 1}, {}, utc);
    w.datetime({2026, 1, 2}, {}, utc);
    w.datetime({2026, 1, 3}, {}, named);
    w.datetime({2026, 1, 4}, {}, utc);
    check_counts_agree(w, 1 + 4 + 2 + 3 + 2);

    // Zones: the first datetime of each distinct key loads the zone.
    TzInfo paris{TzInfo::Zone, 0, "Europe/Paris"};
    TzInfo tokyo{TzInfo::Zone, 0, "Asia/Tokyo"};
    w.reset();
    w.begin_array(3);
    w.time({}, paris);
    w.time({}, tokyo);
    w.time({}, paris);
    check_counts_agree(w, 1 + 3 + 2 * ObjectCount::kZoneObjects);

    // Integers beyond 64 bits: quadratic in their digits.
    std::string digits(4300, '9');
    w.reset();
    w.bigint(digits);
    check_counts_agree(w, 1 + 4300ULL * 4300 / 16384);
    w.reset();
    w.bigint("123456789012345678901234567890");
    check_counts_agree(w, 1);
}

void test_refused_at_the_header() {
    // An array claiming a million nils is refused at its header: the sink hears nothing.
    std::string body = "\xdd";
    body += std::string("\x00\x0f\x42\x40", 4);  // 1,000,000
    body += std::string(1000000, '\xc0');
    int events = -1;
    CHECK(!reads(body, 65536, &events));
    CHECK_EQ(events, 0);
    CHECK(reads(body, 1000001));
    CHECK(!reads(body, 1000000));
    CHECK(reads(body, kUnboundedObjects));

    // Nested: refused at the inner header that goes over, after what came before it.
    Writer w;
    w.reset();
    w.begin_array(3);
    w.begin_array(2);
    w.nil();
    w.nil();
    w.begin_array(1000);
    for (int i = 0; i < 1000; ++i) w.nil();
    w.nil();
    std::string nested(w.view());
    CHECK(!reads(nested, 100, &events));
    CHECK_EQ(events, 4);  // the outer array, the pair and its two nils
}

void test_json_counts() {
    CHECK_EQ(json_objects("[]"), 1u);
    CHECK_EQ(json_objects("  -1.5e+10 "), 1u);
    CHECK_EQ(json_objects(R"({"a":1,"b":[true,null,"x\"y,]"]})"), 8u);
    CHECK_EQ(json_objects(R"(["\\",[],{}])"), 4u);
    CHECK_EQ(json_objects("[1, 22,333 ,\t4444]"), 5u);
    CHECK_EQ(json_objects(R"({"k": {"j": []}})"), 5u);
}

int main() {
    test_counts();
    test_refused_at_the_header();
    test_json_counts();
    return check_report();
}
