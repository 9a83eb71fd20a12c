// app MODEL: detect on a synthetic image with an installed deploykit (the docs' 20-line app).
#include <deploykit/deploykit.hpp>

#include <iostream>
#include <vector>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: app MODEL\n";
        return 2;
    }
    try {
        deploykit::Detector detector(argv[1]);
        const int width = 96, height = 64;
        std::vector<uint8_t> bgr(static_cast<size_t>(width) * height * 3);
        for (size_t i = 0; i < bgr.size(); ++i) bgr[i] = static_cast<uint8_t>(i * 31 % 251);
        deploykit::ImageView image(bgr.data(), width, height, 0, deploykit::PixelFormat::BGR);
        for (const auto& d : detector.predict(image))
            std::cout << d.label_name << " " << d.score << " [" << d.x1 << ", " << d.y1 << ", " << d.x2 << ", " << d.y2 << "]\n";
    } catch (const deploykit::Error& e) {
        std::cerr << "app: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
