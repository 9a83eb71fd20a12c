// Helpers for the tests of the public API.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "deploykit/deploykit.hpp"

// The status and message of the deploykit::Error `body` throws (a test failure when none is).
template <typename F>
std::pair<dk_status, std::string> error_of(F&& body) {
    try {
        body();
    } catch (const deploykit::Error& e) {
        return {e.status(), e.what()};
    }
    ADD_FAILURE() << "no error thrown";
    return {DK_OK, ""};
}

#define EXPECT_CONTAINS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)
